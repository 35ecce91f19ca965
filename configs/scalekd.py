"""ScaleKD's ImageNet recipes (Fan et al., NeurIPS 2024; deep-optimization/ScaleKD configs/distillers),
as `method=scalekd` runs of a frozen, converted teacher:

    python -m lkd_jax.main --workdir runs/skd_r50_swinl \\
      --config configs/scalekd.py:recipe=r50_swin_l,teacher_ckpt=ckpt/swin_large_patch4_window7_224_22kto1k.pth

Recipes (../shared/notes/scalekd-spec.md §7; alpha = (spatial, frequency) DFM weights per stage):

| recipe          | student    | teacher | alpha s3, s4              | heads  | scale | KD  | optimiser |
|-----------------|------------|---------|---------------------------|--------|-------|-----|-----------|
| r50_swin_s      | resnet50   | swin_s  | (.08,.06), (.08, 0)       | 3, 6   | 5     | off | SGD 0.1, 100 ep, x0.1 at 30/60/90 |
| r50_swin_l      | resnet50   | swin_l  | (.08,.06), (.08,.06)      | 16, 24 | 5     | 0.5 | SGD 0.1, 100 ep, x0.1 at 30/60/90 |
| r50d_swin_l     | resnet50d  | swin_l  | (.08,.06), (.08,.06)      | 16, 24 | 5     | 0.5 | LAMB 5e-3 wd .02, 300 ep, 5 warm-up (from 0.25 lr), cosine, clip 5, batch 2048 |
| convnext_t_swin_l | convnext_t | swin_l | (.08,.06), (.08,.06)     | 8, 16  | 1     | 0.5 | AdamW (mmcls ConvNeXt-T schedule) |

Known differences from the official runs, all said here once:
* Traditional recipes: batch 256 (lr 0.1 is mmcls's ResNet-50 `8xb32` rate; the spec records no batch
  for them) and no mixup/cutmix/label smoothing (mmcls's plain ResNet recipe). Weight decay skips 1-D
  parameters (biases, norms) in every optimiser here; mmcls decays them in the SGD recipes.
* Advanced R50-D: the student's loss is soft-target cross-entropy, not mmcls's BCE multi-label head.
* ConvNeXt-T: the historical config (commit 5ba1f04) uses mmcls ConvNeXt with `gap_before_final_norm=False`,
  so its s4 is the final-LayerNorm map; here s4 is the stage-4 output before the norm. Its AdamW
  schedule is mmcls's ConvNeXt-T one as we read it (lr 4e-3 at batch 4096, wd 0.05, 300 epochs,
  20 warm-up epochs); check it against the mmcls file before a full run.
* The teacher runs in eval mode (scalekd_teacher_train_mode=False); the official teacher's drop path
  is active (spec §9, bug 3).

Arguments (after the path, `k=v,k=v`): recipe, teacher_ckpt, epochs (0 = the recipe's), steps (> 0:
smoke runs), batch (per-step global batch; 0 = the recipe's, larger ones accumulate), dataset,
data_dir, num_classes, image_size, mock, seed, teacher_dtype, train_mode_teacher.
"""
import ml_collections

from configs import common

# name -> (student, teacher, alpha_s3, alpha_s4, heads, softmax scale, kd_alpha, optimiser recipe)
RECIPES = {
    'r50_swin_s': ('resnet50', 'swin_s', (0.08, 0.06), (0.08, 0.0), (3, 6), 5.0, 0.0, 'sgd'),
    'r50_swin_l': ('resnet50', 'swin_l', (0.08, 0.06), (0.08, 0.06), (16, 24), 5.0, 0.5, 'sgd'),
    'r50d_swin_l': ('resnet50d', 'swin_l', (0.08, 0.06), (0.08, 0.06), (16, 24), 5.0, 0.5, 'lamb'),
    'convnext_t_swin_l': ('convnext_t', 'swin_l', (0.08, 0.06), (0.08, 0.06), (8, 16), 1.0, 0.5,
                          'adamw'),
}

# Optimiser recipes: (batch, epochs, optim fields, mix fields, drop path of the student).
_NO_MIX = dict(mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.0)
OPTIM = {
    'sgd': (256, 100, dict(name='sgd', lr=0.1, momentum=0.9, weight_decay=1e-4, schedule='step',
                           decay_epochs=(30, 60, 90), decay_rate=0.1, warmup_epochs=0.0),
            _NO_MIX, 0.0),
    'lamb': (2048, 300, dict(name='lamb', lr=5e-3, weight_decay=0.02, warmup_epochs=5.0,
                             warmup_init_lr=5e-3 * 0.25, min_lr=0.0, grad_clip=5.0), {}, 0.05),
    'adamw': (4096, 300, dict(name='adamw', lr=4e-3, weight_decay=0.05, warmup_epochs=20.0,
                              min_lr=1e-6), {}, 0.1),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """A ScaleKD run config; see the module docstring for the recipes and arguments."""
  a = common.parse_arg(
      arg, recipe='r50_swin_l', teacher_ckpt='', epochs=0.0, steps=0, batch=0,
      dataset='imagenet2012', data_dir='', num_classes=0, image_size=224, mock=0, seed=0,
      teacher_dtype='bfloat16', train_mode_teacher=False)
  if a.recipe not in RECIPES:
    raise ValueError(f'recipe={a.recipe!r}; choose one of {", ".join(RECIPES)}.')
  student, teacher, alpha3, alpha4, heads, scale, kd_alpha, opt = RECIPES[a.recipe]
  eff_batch, epochs, optim, mix, drop_path = OPTIM[opt]
  batch = a.batch or eff_batch
  if eff_batch % batch:
    raise ValueError(f'batch={batch} must divide the recipe batch {eff_batch} (gradient '
                     'accumulation takes whole steps).')
  c = common.base_config()
  c.seed = a.seed
  c.num_classes = a.num_classes
  c.method = 'scalekd'
  c.batch_size = batch
  c.eval_batch_size = min(batch, 1024)
  c.epochs = a.epochs or float(epochs)
  c.total_steps = a.steps
  c.eval_every_epochs = 1.0
  c.log_every = 100
  c.checkpoint_every = 2000
  c.model = ml_collections.ConfigDict({'name': student, 'kwargs': {'drop_path_rate': drop_path}})
  c.teacher.update(name=teacher, checkpoint=a.teacher_ckpt, dtype=a.teacher_dtype)
  c.optim.update(grad_accum_steps=eff_batch // batch, **optim)
  c.mix.update(**mix)
  c.data.update(source='tfds', name=a.dataset, data_dir=a.data_dir, image_size=a.image_size,
                mock=a.mock)
  c.scalekd_alpha_s3, c.scalekd_alpha_s4 = alpha3, alpha4
  c.scalekd_heads = heads
  c.scalekd_softmax_scale = (scale, scale)
  c.scalekd_kd_alpha, c.scalekd_kd_temperature = kd_alpha, 1.0
  c.scalekd_teacher_train_mode = a.train_mode_teacher
  return c
