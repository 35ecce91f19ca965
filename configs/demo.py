"""Embedded default job: tiny SLaK teacher -> tiny ResNet student on the synthetic glyph-pairs task.

    python -m lkd_jax.main --config configs/demo.py --workdir /tmp/lkd_demo
    python -m lkd_jax.main --config configs/demo.py:method=kd,seed=1,steps=600 --workdir /tmp/lkd_demo1
    python -m lkd_jax.main --config configs/demo.py:method=scalekd,teacher=swin_atto --workdir /tmp/lkd_skd

Trains the teacher (slak_atto, CE), the baseline student (resnet_atto, CE) and the distilled student
(resnet_atto, `method`, same seed and data order as the baseline), then prints the table and writes
report.json / report.md. Runs on CPU in minutes; the measured result is in README.md.
"""
import ml_collections

from configs import common


# The demo teacher: SLaK blocks with large kernels on 64 px inputs (stage maps 16, 8, 4, 2 px, so
# every kernel spans its whole map) and small edge 5: three branches Kx5 + 5xK + 5x5. Layer scale
# starts at 1 instead of 1e-6 so this 5-block net trains in a few hundred steps.
TEACHER_KWARGS = {'slak_atto': {'kernel_size': (31, 29, 27, 13, 5), 'layer_scale_init_value': 1.0},
                  # Swin at 64 px: stage maps 16, 8, 4, 2 with 4x4 windows (7 divides none of them).
                  'swin_atto': {'img_size': 64, 'window_size': 4}}
# method=scalekd: CAP heads at (stage 3, stage 4), dividing the teacher's widths there (swin_atto,
# deit_atto, convnext_atto: head width 16 on (64, 128) or 12 on (48, 48); slak_atto's 83 and 166 take
# 1 and 2); the rest is the official R50 <- Swin-L recipe's (alpha 0.08 / 0.06, softmax scale 5, KD 0.5).
SCALEKD_HEADS = {'slak_atto': (1, 2), 'deit_atto': (4, 4)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo job config; arguments: seed, method, steps, teacher_steps, teacher, student, batch,
  num_train, method hyper-parameters nkd_gamma, fd_weight, fd_stages ('+'-joined), dkd_warmup_steps,
  teacher_depthwise: the depthwise impl of the distilled stage (its frozen teacher's forward), and
  teacher_check: eval batches the teacher is checked on before distilling (0: none, for smoke runs
  whose few-step teacher is still at chance)."""
  a = common.parse_arg(arg, seed=0, method='kd', steps=400, teacher_steps=2000,
                       teacher='slak_atto', student='resnet_atto', batch=64, num_train=512,
                       teacher_num_train=4096,
                       nkd_gamma=1.5, fd_weight=1.0, fd_stages='stage4', dkd_warmup_steps=0,
                       teacher_depthwise='auto', teacher_check=10)
  for key in ('steps', 'teacher_steps', 'batch', 'num_train', 'teacher_num_train'):
    if a[key] <= 0:
      raise ValueError(f'Config argument {key}={a[key]} must be positive.')
  c = common.base_config()
  c.seed = a.seed
  c.num_classes = 10
  c.batch_size = a.batch
  c.eval_batch_size = 256
  c.log_every = 50
  c.eval_every = 100  # eval top-1 curves (report --plot); evaluation never changes the training
  c.checkpoint_every = 200
  c.data.update(source='synthetic', seed=0, num_train=a.num_train, num_eval=2048, image_size=64,
                shift=4)
  c.optim.update(lr=2e-3, min_lr=1e-5, warmup_steps=50, weight_decay=0.05, grad_clip=5.0)
  # Flips do not preserve the glyph-pairs label; mixing is off to keep the tiny runs short.
  c.mix.update(mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1)
  c.kd_alpha = 0.9
  c.kd_temperature = 3.0
  c.update(nkd_gamma=a.nkd_gamma, fd_weight=a.fd_weight, fd_stages=a.fd_stages,
           dkd_warmup_steps=a.dkd_warmup_steps)
  c.scalekd_heads = SCALEKD_HEADS.get(a.teacher, (4, 8))
  # Every stage ends on the embedded corruption suite (5 corruptions x 5 severities, 512 images
  # each): the report's robustness column.
  c.evals = 'synthetic_c'
  c.eval_options.num_eval = 512
  c.teacher.name = a.teacher
  c.teacher.check_batches = a.teacher_check  # 0: no check (smoke runs whose teacher is at chance)
  c.stages = ('teacher', 'student', 'distilled')
  c.stage_overrides = ml_collections.ConfigDict({
      'teacher': {'model': {'name': a.teacher, 'kwargs': TEACHER_KWARGS.get(a.teacher, {})},
                  'method': 'ce', 'total_steps': a.teacher_steps, 'eval_every': 250,
                  'data': {'num_train': a.teacher_num_train}},
      'student': {'model': {'name': a.student}, 'method': 'ce', 'total_steps': a.steps},
      'distilled': {'model': {'name': a.student}, 'method': a.method, 'total_steps': a.steps,
                    'depthwise_impl': a.teacher_depthwise},
  })
  return c
