"""Shared config pieces: `file.py:k=v,k=v` argument parsing and the default run recipe."""
from __future__ import annotations

from typing import Any

import ml_collections


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses 'k=v,k=v' (a bare 'k' means True) into the typed `defaults`; unknown keys raise."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, _, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ValueError(f'Unknown config argument {key!r}; known: {", ".join(sorted(defaults))}.')
    if not _:
      value = 'true'
    out[key] = _cast(value.strip(), defaults[key], key)
  return out


def _cast(value: str, default: Any, key: str) -> Any:
  if isinstance(default, bool):
    if value.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'Config argument {key}={value!r} must be true or false.')
    return value.lower() in ('true', '1')
  try:
    return type(default)(value) if default is not None else value
  except ValueError as e:
    raise ValueError(f'Config argument {key}={value!r} is not a {type(default).__name__}.') from e


def base_config() -> ml_collections.ConfigDict:
  """One run: model, optional teacher + method, data, optimizer, schedule, logging, checkpoints."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_classes = 1000          # 0 = the dataset's (tfds: lkd_jax/data/tfds_pipeline.py resolve).
  c.method = 'ce'
  c.batch_size = 128
  c.eval_batch_size = 256
  c.total_steps = 0            # > 0 overrides epochs.
  c.epochs = 1.0
  c.log_every = 50
  c.eval_every = 0             # 0: evaluate only at the end.
  c.eval_every_epochs = 0.0    # > 0 overrides eval_every with that many epochs of steps.
  c.target_accuracy = 0.0      # > 0: training ends at the first periodic eval whose top-1 reaches it.
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.depthwise_impl = 'auto'
  c.conv_impl = 'auto'         # dense convs: 'auto' (matmul forms on CPU, XLA conv elsewhere), 'xla', 'matmul', 'matmul_reshape'.
  c.layer_norm_impl = 'auto'   # LayerNorm statistics: 'auto' ('dot/reduce' on CPU, else 'reduce'), 'reduce', 'dot/reduce'.
  c.host_malloc = 'auto'       # glibc malloc kept warm for XLA:CPU (lkd_jax/kernels/host_malloc.py): 'auto' (CPU runs), 'tuned', 'system'.
  c.evals = ''                 # '+'-joined evaluation suites run at the end (lkd_jax/evaluate/sets.py:
                               # imagenet_a+imagenet_r+imagenet_c, synthetic_c, ...); in final_metrics.json
  c.eval_options = ml_collections.ConfigDict({'num_eval': 0})  # evaluate.options() overrides
  # Student arithmetic: 'float32' or 'bfloat16' (activations, convs and matmuls; params, optimizer
  # state, EMA, BatchNorm statistics, softmaxes and losses stay float32). No loss scaling: bfloat16
  # keeps float32's 8-bit exponent, so gradients do not underflow as they would in float16.
  c.compute_dtype = 'float32'
  # Device mesh (data, fsdp): fsdp > 1 shards params, optimizer state, EMA and the teacher over
  # groups of that many devices (lkd_jax/sharding.py param_spec); 1 = plain data parallelism.
  c.mesh = ml_collections.ConfigDict({'fsdp': 1})
  c.ema_decay = 0.0            # > 0 keeps an EMA of the student (paper: 0.9999) and evaluates it too.
  c.model = ml_collections.ConfigDict({'name': 'resnet50', 'kwargs': {}})
  c.teacher = ml_collections.ConfigDict(
      {'name': '', 'dtype': 'float32', 'kwargs': {},
       # An lkd_jax run dir (finished, unless allow_partial), a converted dir or a .pth/.npz/
       # .safetensors file; in a job, 'stage:teacher' is the job's own teacher stage.
       'checkpoint': '', 'allow_partial': False,
       # Before distilling, the teacher is evaluated on check_batches eval batches under the
       # student's eval transform; at chance level (a wrong load) the run stops. check_min_accuracy:
       # -1 = above chance by a margin (evaluate.chance_threshold), 0 = record only; 0 batches: skip.
       'check_batches': 10, 'check_min_accuracy': -1.0,
       # SLaK teachers (lkd_jax/models/slak.py INFERENCE_FORMS): 'branches' (the reference's), 'merged'
       # (one BN-folded KxK kernel + bias per unit), 'merged_decom' (BN-folded KxN + NxK kernels + bias).
       'inference_form': 'branches'})
  c.optim = ml_collections.ConfigDict(dict(
      lr=4e-3, min_lr=1e-6, warmup_steps=0, warmup_epochs=0.0, warmup_init_lr=0.0, weight_decay=0.05, b1=0.9,
      b2=0.999, eps=1e-8, grad_clip=0.0, grad_accum_steps=1,
      name='adamw',          # 'adamw', 'lamb' (ScaleKD advanced) or 'sgd' (torch-style weight decay)
      momentum=0.9,          # sgd only
      schedule='cosine',     # 'cosine' (warm-up + cosine) or 'step' (lr * decay_rate at decay_epochs)
      decay_epochs=(), decay_rate=0.1))
  c.mix = ml_collections.ConfigDict(dict(
      mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, mix_prob=1.0, label_smoothing=0.1))
  c.data = ml_collections.ConfigDict(dict(
      source='tfds',          # 'tfds' (lkd_jax/data/tfds_pipeline.py) or 'synthetic'
      seed=0,                 # synthetic: content seed of the glyph pairs (tfds order uses c.seed)
      num_train=0,            # synthetic: examples; tfds: 0 = whole split, N > 0 = its first N
      num_eval=0,             # as num_train, for the eval split
      image_size=224,         # train crop and eval size S (timm/SLaK --input_size 224)
      shift=0,                # synthetic only: max translation in pixels
      # ---- tfds only (lkd_jax/data/tfds_pipeline.py, lkd_jax/data/augment.py) ----
      name='imagenet2012',    # TFDS name[/config][:version]; 'folder:ROOT' = ROOT/split/class/*.jpg
      data_dir='',            # '' = TFDS default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
      mock=0,                 # N > 0: N random tfds.testing.mock_data examples per split (smoke)
      train_split='train',
      eval_split='',          # '' = the dataset's own (validation/val/test: tfds_pipeline.py)
      shuffle_buffer=16384,   # raw records per process (~1.8 GB of ImageNet JPEGs): bounded RAM
      cache_eval=False,       # keep the preprocessed eval share in RAM (ImageNet: 7.5 GB/processes)
      threads=0,              # tf.data private threadpool; 0 = usable CPU cores (big_vision: 48)
      prefetch=2,             # host batches prefetched (big_vision prefetch(2))
      crop_pct=0.875,         # eval: shorter side to S/crop_pct, centre crop S (timm/SLaK default)
      scale=(0.08, 1.0),      # RandomResizedCrop area range (timm/SLaK --scale default)
      ratio=(3 / 4, 4 / 3),   # RandomResizedCrop aspect range (timm/SLaK --ratio default)
      interpolation='bicubic',  # train and eval resize (timm/SLaK --train_interpolation bicubic)
      augment_on='auto',      # 'device': tf.data decodes the crop, the jitted step resizes, flips,
                              # RandAugments, erases (lkd_jax/data/device_augment.py); 'host': all in
                              # tf.data; 'auto': device on GPU/TPU, host where JAX runs on CPU
      canvas=0,               # device: crops up to this side go unresized (0 = 2 * image_size)
      hflip=0.5,              # horizontal flip probability (timm --hflip default)
      randaugment='rand-m9-mstd0.5-inc1',  # timm RandAugment spec, '' = off (SLaK/ConvNeXt --aa)
      reprob=0.25,            # random erasing probability (SLaK/ConvNeXt --reprob 0.25)
      remode='pixel',         # random erasing fill: per-pixel N(0, 1) (timm/SLaK --remode pixel)
      recount=1,              # random erasing boxes (timm/SLaK --recount 1)
  ))
  # ---- Distillation method hyper-parameters (lkd_jax/distill/methods.py cites each source) ----
  c.kd_alpha = 0.1             # kd: weight of T^2 KL; CE gets 1 - kd_alpha (LK-KD engine_kd.py)
  c.kd_temperature = 3.0       # kd: T (LK-KD scripts --T 3.0)
  c.nkd_gamma = 1.5            # nkd: non-target weight (cls_KD ImageNet CNN configs)
  c.nkd_temperature = 1.0      # nkd: non-target temperature (cls_KD); nkd_lkkd is fixed at 1 / 1
  c.fd_weight = 1.0            # fd*: weight of the FD term (LK-KD --lr_fd default 1.0)
  c.fd_stages = 'stage4'       # fd*: '+'-joined stages, one 1x1 projector each (LK-KD --feature_n 1)
  c.fd_loss = 'smooth_l1'      # fd*: 'smooth_l1' (beta fd_beta, Wei et al. FD) or 'mse'
  c.fd_beta = 2.0              # fd*: SmoothL1 beta
  c.dkd_alpha = 1.0            # dkd: TCKD weight (mdistiller ImageNet)
  c.dkd_beta = 0.5             # dkd: NCKD weight (mdistiller ImageNet)
  c.dkd_temperature = 1.0      # dkd: T
  c.dkd_warmup_steps = 0       # dkd: linear warm-up of the DKD term; 0 = full weight from step 0
  c.dist_beta = 1.0            # dist: inter-class (per-example) relation weight
  c.dist_gamma = 1.0           # dist: intra-class (global-batch) relation weight
  c.dist_tau = 1.0             # dist: softmax temperature
  c.scalekd_alpha_s3 = (0.08, 0.06)  # scalekd: stage-3 (spatial, frequency) DFM weights (ScaleKD R50 recipes)
  c.scalekd_alpha_s4 = (0.08, 0.06)  # scalekd: stage-4 (spatial, frequency) DFM weights
  c.scalekd_heads = (16, 24)         # scalekd: CAP heads at (stage 3, stage 4) (R50 <- Swin-L)
  c.scalekd_softmax_scale = (5.0, 5.0)  # scalekd: CAP attention logit scale at (stage 3, stage 4)
  c.scalekd_kd_alpha = 0.5           # scalekd: KD weight a (CE gets 1 - a); 0 = no KD term
  c.scalekd_kd_temperature = 1.0     # scalekd: KD T
  c.scalekd_teacher_train_mode = False  # scalekd: True reproduces the official train-mode teacher's
                                        # drop path in the TPP tail (spec bug 3); False: eval, deterministic
  # ---- end of distillation method hyper-parameters ----
  return c
