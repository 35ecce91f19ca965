"""The paper's ImageNet distillation runs: a frozen teacher distilled into a small-kernel student.

    python -m lkd_jax.main --workdir runs/slakt_convnextt_nkd \\
      --config configs/slak_kd.py:teacher=slak_t,student=convnext_t_bn,method=nkd_lkkd,epochs=300,teacher_ckpt=ckpt/SLaK_tiny_checkpoint.pth
    python -m lkd_jax.main --workdir runs/slakt_r50_kd \\
      --config configs/slak_kd.py:teacher=slak_t,student=resnet50,method=kd,epochs=120,teacher_ckpt=ckpt/slak_t
    python -m lkd_jax.main --workdir runs/folder_r50_ce \\
      --config configs/slak_kd.py:dataset=folder:/data/imagenet100,student=resnet50,method=ce,epochs=100
A folder dataset (ROOT/{train,val}/<class>/*.JPEG) needs no split or class-count arguments: the eval
split is its only val/validation/test folder and num_classes its number of class folders. A
distillation run on it needs a teacher with that many classes.

Expected results (the paper's reported numbers, ImageNet-1K val top-1 at 224 px; SLaK README):
SLaK-T (82.5) -> ConvNeXt-T (+BN) with NKD for 300 epochs: 83.1; SLaK-S (83.8) -> ConvNeXt-S with
NKD for 300 epochs: 84.3 (baseline ConvNeXt-S 83.1). The 120-epoch KD / NKD / FD tables of the paper
(ResNet-50 and ConvNeXt-T students, all five teachers) are not reproduced in any released file; this
repository has not run them yet.

Recipe (VITA-Group/SLaK main_KD.py defaults = SLaK main.py): AdamW lr 4e-3 (not rescaled with the
batch), weight decay 0.05, 20 warm-up epochs, cosine to 1e-6, RandAugment rand-m9-mstd0.5-inc1,
mixup 0.8 / cutmix 1.0 / switch 0.5, label smoothing 0.1, random erasing 0.25, EMA 0.9999, no
gradient clipping, seed 0. Effective batch as the authors' commands: 2048 for ConvNeXt-T students
(README: 4 GPUs x 64 x 8 accumulation steps), 4096 for ConvNeXt-S (README: 4 x 64 x 16), 1024 for
ResNet-50 (scripts_dis_NKD/test.sh: 2 x 64 x 8). Drop path 0.1 for ConvNeXt students; 0 for ResNet-50 (timm1's resnet50(args) never
receives --drop_path). KD: alpha 0.1, T 3 (scripts --T 3.0). `nkd_lkkd` is the released NKD
(temperature 1, weight 1, replaces CE); `nkd` is the official NKD (gamma 1.5, plus CE).

Arguments (after the path, `k=v,k=v`):
  teacher       slak_t | slak_s | slak_b | convnext_t | swin_t | vit_s_legacy | deit_s | cswin_t (any registered model)
  student       resnet50 | convnext_t | convnext_t_bn | convnext_s_bn (any registered model)
  method        kd | nkd | nkd_lkkd | fd | fd+kd | fd+nkd | fd+nkd_lkkd | dkd | dist | ce (ce: no teacher)
  epochs        120 | 300 (any number); steps > 0 overrides it (smoke runs)
  teacher_ckpt  .pth | .npz | .safetensors | converted dir | lkd_jax run dir
  teacher_form  merged_decom | merged | branches: a SLaK teacher's eval form (default merged_decom for
                slak_* teachers: BN and the 5x5 branch folded into the Kx5 / 5xK kernels, same logits
                within float rounding, faster: README, Performance; merged: one KxK kernel per
                unit; branches: the reference's three conv+BN branches, the only form for others)
  eff_batch     effective batch (0: the paper's for the student); batch: per-step global batch
                (0: = eff_batch); eff_batch / batch gradient-accumulation steps
  dataset       a TFDS name (imagenet2012, cifar100, name/config:version) prepared in data_dir, or
                folder:ROOT for images in ROOT/<split>/<class>/*.jpg; data_dir ('' = TFDS default)
  eval_split    '' (default) = the dataset's own: TFDS 'validation' if it has one, else its only split
                named val, validation or test (several or none: an error listing them); or a name
  num_classes   0 (default) = the dataset's class count (imagenet2012 1000, a folder its class
                folders); N: checked against the dataset's
  image_size; mock > 0: that many tfds.testing.mock_data examples (tests)
  evals         '+'-joined evaluation suites run at the end, e.g.
                imagenet_v2+imagenet_real+imagenet_a+imagenet_r+imagenet_sketch+imagenet_c
                (python -m lkd_jax.evaluate runs them on any checkpoint too)
  compute_dtype the student's arithmetic: auto (default: bfloat16 on GPU/TPU, float32 on CPU, where
                XLA has no fast bfloat16 convolutions) | float32 | bfloat16; params, optimizer state,
                EMA, BatchNorm statistics and losses stay float32 (no loss scaling: bfloat16 has
                float32's exponent range)
  fsdp          devices per FSDP group (default 1): params, optimizer state, EMA and the teacher are
                sharded over them, the batch over all devices (README, Pods and clusters)
  teacher_check eval batches the frozen teacher is checked on before distilling (a teacher at
                chance level stops the run: a wrong load); 0 skips the check
"""
import ml_collections

from configs import common

# (effective batch, drop path) of the authors' commands, by student name prefix (first match).
STUDENT_RECIPES = (
    ('resnet', 1024, 0.0),       # scripts_dis_NKD/test.sh: 2 GPUs x 64 x 8 accumulation steps
    ('convnext_s', 4096, 0.1),   # README, SLaK-S -> ConvNeXt-S: 4 x 64 x 16
    ('', 2048, 0.1),             # README, SLaK-T -> ConvNeXt-T: 4 x 64 x 8
)


def _student_recipe(student: str) -> dict:
  for prefix, eff_batch, drop_path in STUDENT_RECIPES:
    if student.startswith(prefix):
      return {'eff_batch': eff_batch, 'drop_path': drop_path}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The distillation run config; see the module docstring for the arguments."""
  a = common.parse_arg(
      arg, teacher='slak_t', student='resnet50', method='nkd_lkkd', epochs=120.0, steps=0,
      teacher_ckpt='', teacher_form='', teacher_dtype='bfloat16', eff_batch=0, batch=0,
      lr=4e-3, warmup_epochs=20.0, drop_path=-1.0, ema=0.9999, seed=0, dataset='imagenet2012',
      data_dir='', eval_split='', num_classes=0, image_size=224, mock=0, eval_every_epochs=1.0,
      evals='', teacher_check=10, compute_dtype='auto', fsdp=1)
  recipe = _student_recipe(a.student)
  eff_batch = a.eff_batch or recipe['eff_batch']
  batch = a.batch or eff_batch
  if eff_batch % batch:
    raise ValueError(f'eff_batch={eff_batch} must be a multiple of batch={batch} '
                     '(gradient accumulation takes whole steps).')
  c = common.base_config()
  c.seed = a.seed
  c.num_classes = a.num_classes
  c.method = a.method
  c.batch_size = batch
  c.eval_batch_size = min(batch, 1024)
  c.epochs = a.epochs
  c.total_steps = a.steps
  c.eval_every_epochs = a.eval_every_epochs
  c.log_every = 100
  c.checkpoint_every = 2000
  c.ema_decay = a.ema
  drop_path = recipe['drop_path'] if a.drop_path < 0 else a.drop_path
  c.model = ml_collections.ConfigDict({'name': a.student,
                                       'kwargs': {'drop_path_rate': drop_path}})
  c.evals = a.evals
  c.compute_dtype = a.compute_dtype
  c.mesh.fsdp = a.fsdp
  c.teacher.update(name='' if a.method == 'ce' else a.teacher, checkpoint=a.teacher_ckpt,
                   dtype=a.teacher_dtype, check_batches=a.teacher_check,
                   inference_form=a.teacher_form or (
                       'merged_decom' if a.teacher.startswith('slak') else 'branches'))
  c.optim.update(lr=a.lr, min_lr=1e-6, warmup_epochs=a.warmup_epochs, weight_decay=0.05,
                 grad_clip=0.0, grad_accum_steps=eff_batch // batch)
  c.data.update(source='tfds', name=a.dataset, data_dir=a.data_dir, eval_split=a.eval_split,
                image_size=a.image_size, mock=a.mock)
  c.kd_alpha, c.kd_temperature = 0.1, 3.0
  return c
