"""Batch mixup / cutmix on device, and the one augmented batch that teacher and student share."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lkd_jax import models, optim, train
from lkd_jax import step as step_lib
from lkd_jax.data import mix, synthetic
from tests.conftest import tiny_run_config

C = 10


def _mix_cfg(**kw):
  c = ml_collections.ConfigDict(dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5,
                                     mix_prob=1.0, label_smoothing=0.1))
  c.update(kw)
  return c


@pytest.mark.parametrize('kw', [{}, {'cutmix_alpha': 0.0}, {'mixup_alpha': 0.0},
                                {'mixup_alpha': 0.0, 'cutmix_alpha': 0.0}, {'mix_prob': 0.5}])
def test_mixed_targets_sum_to_one_and_mix_two_labels(kw):
  r = np.random.default_rng(0)
  images = jnp.asarray(r.uniform(0, 255, size=(8, 16, 16, 3)), jnp.float32)
  labels = jnp.asarray(r.integers(0, C, size=8))
  for s in range(6):
    x, t = mix.mix_batch(jax.random.key(s), images, labels, C, _mix_cfg(**kw))
    t = np.asarray(t)
    np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
    assert x.shape == images.shape and t.min() >= 0.1 / C - 1e-7
    # Each row puts its mass (beyond smoothing) on its own label and its flipped partner's only.
    own = np.eye(C)[np.asarray(labels)] + np.eye(C)[np.asarray(labels)[::-1]]
    assert np.all(t[own == 0] == pytest.approx(0.1 / C))


def test_cutmix_weight_equals_the_pasted_area():
  r = np.random.default_rng(1)
  images = jnp.asarray(r.uniform(0, 255, size=(4, 20, 24, 3)).round(), jnp.float32)
  labels = jnp.arange(4)
  cfg = _mix_cfg(mixup_alpha=0.0, label_smoothing=0.0)
  for s in range(8):
    x, t = mix.mix_batch(jax.random.key(s), images, labels, C, cfg)
    x, t = np.asarray(x), np.asarray(t)
    from_flip = np.all(x == np.asarray(images)[::-1], -1) & ~np.all(x == np.asarray(images), -1)
    lam = t[0, 0]  # row 0: own label 0 has weight lam, partner label 3 has 1 - lam.
    np.testing.assert_allclose(from_flip[0].mean(), 1.0 - lam, atol=1e-6)
    assert np.all((x == np.asarray(images)) | (x == np.asarray(images)[::-1]))


def _device_batch(images, labels):
  """The same images as a device-augment batch: canvases twice their size, crop sizes, seeds."""
  n, s = images.shape[:2]
  canvas = np.zeros((n, 2 * s, 2 * s, 3), np.uint8)
  canvas[:, :s, :s] = images
  return {'image': canvas, 'crop_hw': np.full((n, 2), s, np.int32),
          'aug_seed': np.arange(2 * n, dtype=np.uint32).reshape(n, 2), 'label': labels}


@pytest.mark.parametrize('device_batch', [False, True])
def test_teacher_and_student_see_the_same_augmented_pixels(monkeypatch, device_batch):
  cfg = tiny_run_config(method='kd', **{'teacher.name': 'resnet_atto'})
  g_s, s_state = nnx.split(models.create('resnet_atto', num_classes=C, seed=0))
  tx, lr_fn = optim.make(cfg, 10)
  state, graphs = train.init_state(cfg, nnx.merge(g_s, s_state), None, tx)
  graphs = graphs._replace(teacher=g_s)
  seen = {}
  teacher_forward, student_loss = step_lib.teacher_forward, step_lib.student_loss

  def spy_teacher(graph, t_state, x, dtype):
    seen['teacher'] = x
    return teacher_forward(graph, t_state, x, dtype)

  def spy_student(params, batch_stats, graphs, teacher_out, x, targets, *a, **k):
    seen['student'] = x
    return student_loss(params, batch_stats, graphs, teacher_out, x, targets, *a, **k)

  monkeypatch.setattr(step_lib, 'teacher_forward', spy_teacher)
  monkeypatch.setattr(step_lib, 'student_loss', spy_student)
  images, labels = synthetic.make_split(0, 'train', 8, 32)
  fn = functools.partial(step_lib.train_step, graphs=graphs, tx=tx, lr_fn=lr_fn, cfg=cfg)
  batch = _device_batch(images, labels) if device_batch else {'image': images, 'label': labels}
  jax.eval_shape(fn, state, s_state, batch)  # traces, no FLOPs
  # One traced value: the augmented (device_batch: on device), mixed pixels are computed once and
  # fed to both networks.
  assert seen['teacher'] is seen['student'] and seen['student'].shape == (8, 32, 32, 3)
