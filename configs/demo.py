"""Embedded default job: tiny SLaK teacher -> tiny ResNet student on the synthetic glyph-pairs task.

    python -m lkd_jax.main --config configs/demo.py --workdir /tmp/lkd_demo
    python -m lkd_jax.main --config configs/demo.py:method=kd,seed=1,steps=600 --workdir /tmp/lkd_demo1

Trains the teacher (slak_atto, CE), the baseline student (resnet_atto, CE) and the distilled student
(resnet_atto, `method`, same seed and data order as the baseline), then prints the table and writes
report.json / report.md. Runs on CPU in minutes; the measured result is in README.md.
"""
import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo job config; arguments: seed, method, steps, teacher_steps, teacher, student, batch."""
  a = common.parse_arg(arg, seed=0, method='kd', steps=600, teacher_steps=600,
                       teacher='slak_atto', student='resnet_atto', batch=64, num_train=4096)
  c = common.base_config()
  c.seed = a.seed
  c.num_classes = 10
  c.batch_size = a.batch
  c.eval_batch_size = 256
  c.log_every = 50
  c.checkpoint_every = 200
  c.data.update(source='synthetic', seed=0, num_train=a.num_train, num_eval=2048, image_size=64,
                shift=4)
  c.optim.update(lr=2e-3, min_lr=1e-5, warmup_steps=50, weight_decay=0.05, grad_clip=5.0)
  # Flips do not preserve the glyph-pairs label; mixing is off to keep the tiny runs short.
  c.mix.update(mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1)
  c.kd_alpha = 0.9
  c.kd_temperature = 3.0
  c.teacher.name = a.teacher
  c.stages = ('teacher', 'student', 'distilled')
  c.stage_overrides = ml_collections.ConfigDict({
      'teacher': {'model': {'name': a.teacher}, 'method': 'ce', 'total_steps': a.teacher_steps},
      'student': {'model': {'name': a.student}, 'method': 'ce', 'total_steps': a.steps},
      'distilled': {'model': {'name': a.student}, 'method': a.method, 'total_steps': a.steps},
  })
  return c
