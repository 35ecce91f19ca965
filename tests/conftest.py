"""Test setup: 8 fake CPU devices (set before JAX is imported), repo root on sys.path, shared fixtures."""
import os
import sys
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One XLA compilation cache for the session, its subprocesses included: the tests build the same
# tiny models and steps many times, and a cached executable is the one a fresh compile gives.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='lkd_jax_xla_cache_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.1')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import pytest  # noqa: E402


def pytest_collection_modifyitems(items):
  """Heavy end-to-end tests first, so that the xdist workers share them instead of one worker
  running the last of them alone."""
  items.sort(key=lambda item: item.get_closest_marker('heavy') is None)


@pytest.fixture(scope='session', autouse=True)
def _eight_devices():
  assert jax.device_count() == 8, 'tests expect 8 fake CPU devices (XLA_FLAGS set too late?)'


def tiny_run_config(**overrides):
  """A seconds-long CE run of resnet_atto on 32x32 glyph pairs."""
  from configs import common
  c = common.base_config()
  c.num_classes = 10
  c.model.name = 'resnet_atto'
  c.batch_size = 16
  c.eval_batch_size = 32
  c.total_steps = 6
  c.log_every = 2
  c.checkpoint_every = 3
  c.data.update(source='synthetic', num_train=64, num_eval=40, image_size=32, shift=2)
  c.optim.update(lr=1e-3, warmup_steps=2)
  c.teacher.update(check_batches=1, check_min_accuracy=0.0)  # tiny teachers sit near chance
  c.mix.update(mixup_alpha=0.8, cutmix_alpha=1.0)
  c.update_from_flattened_dict(overrides)
  return c


def kd_setup(cfg):
  """A resnet_atto student (seed 0) and frozen teacher (seed 1) for `cfg`'s step: (graphs with the
  teacher, tx, lr_fn, state, teacher state, a batch of 16 synthetic images)."""
  from flax import nnx
  from lkd_jax import models, optim, train
  from lkd_jax.data import synthetic
  student = models.create('resnet_atto', num_classes=10, seed=0)
  t_graph, t_state = nnx.split(models.create('resnet_atto', num_classes=10, seed=1))
  tx, lr_fn = optim.make(cfg, 10)
  state, graphs = train.init_state(cfg, student, None, tx)
  images, labels = synthetic.make_split(0, 'train', 16, 32)
  return graphs._replace(teacher=t_graph), tx, lr_fn, state, t_state, {'image': images,
                                                                       'label': labels}


def run_kd_steps(cfg, mesh, steps: int):
  """`steps` of the run's jitted step (train.jit_train_step) on `mesh` from kd_setup, one batch
  repeated: (state, teacher state, losses)."""
  from lkd_jax import sharding, train
  graphs, tx, lr_fn, state, t_state, batch = kd_setup(cfg)
  state, t_state = sharding.put_params(state, mesh), sharding.put_params(t_state, mesh)
  fn = train.jit_train_step(cfg, graphs, tx, lr_fn, mesh, state, t_state)
  batch = sharding.global_batch(batch, mesh)
  losses = []
  for _ in range(steps):
    state, metrics = fn(state, t_state, batch)
    losses.append(float(metrics['loss']))
  return state, t_state, losses
