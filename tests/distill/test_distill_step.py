"""Methods inside the fused step: projectors are trained and checkpointed with the student, dropped on export."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lkd_jax import checkpoints, models, optim, rundir, sharding, train
from lkd_jax import step as step_lib
from lkd_jax.data import synthetic
from lkd_jax.distill import methods, projectors
from tests.conftest import tiny_run_config


@functools.lru_cache(maxsize=None)
def _model(name, seed):
  """Built once per module: models.create compiles its initialiser (seconds on a busy CPU)."""
  return nnx.split(models.create(name, num_classes=10, seed=seed))


def _fd_state(cfg):
  student = nnx.merge(*_model('resnet_atto', 0))
  # The teacher is the same (randomly initialised) network: one model build, the cheapest compile.
  t_graph, t_state = _model('resnet_atto', 0)
  size = cfg.data.image_size
  proj = methods.build_projector(cfg, projectors.feature_shapes(student, size),
                                 projectors.feature_shapes((t_graph, t_state), size), cfg.seed)
  tx, lr_fn = optim.make(cfg, 10)
  state, graphs = train.init_state(cfg, student, proj, tx)
  return state, graphs._replace(teacher=t_graph), t_state, tx, lr_fn


def test_fd_nkd_fused_step_trains_projector_on_eight_devices():
  cfg = tiny_run_config(method='fd+nkd', **{'teacher.name': 'resnet_atto'})
  cfg.fd_stages = 'stage3+stage4'
  cfg.optim.warmup_steps = 0  # a non-zero learning rate at step 0
  state, graphs, t_state, tx, lr_fn = _fd_state(cfg)
  assert set(state.params['projector']) == {'stage3', 'stage4'}
  assert state.params['projector']['stage4']['proj']['kernel'].shape == (128, 128)
  fn = functools.partial(step_lib.train_step, graphs=graphs, tx=tx, lr_fn=lr_fn, cfg=cfg)
  mesh = sharding.make_mesh()
  repl, bsh = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  jitted = jax.jit(fn, in_shardings=(repl, repl, bsh), out_shardings=(repl, repl))
  images, labels = synthetic.make_split(0, 'train', 16, 32)
  batch = sharding.global_batch({'image': images, 'label': labels}, mesh)
  new, metrics = jitted(*sharding.put_replicated((state, t_state), mesh), batch)
  metrics = jax.device_get(metrics)
  for k in ('loss', 'ce', 'nkd_target', 'nkd_non_target', 'fd', 'fd_stage3', 'fd_stage4'):
    assert np.isfinite(metrics[k]), k
  assert metrics['fd'] > 0
  before, after = state.params['projector'], jax.device_get(new.params['projector'])
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    assert float(jnp.abs(a - b).max()) > 1e-6, 'projector parameters were not optimised'


def test_projector_is_checkpointed_and_dropped_on_export(tmp_path):
  cfg = tiny_run_config(method='fd', **{'teacher.name': 'resnet_atto'})
  state, _, _, _, _ = _fd_state(cfg)
  run_dir = str(tmp_path / 'run')
  rundir.write_config(cfg, run_dir)
  with checkpoints.manager(os.path.join(run_dir, 'checkpoints')) as mngr:
    checkpoints.save(mngr, 1, state, force=True)
    mngr.wait_until_finished()
    raw = checkpoints.restore_raw(mngr)
  assert 'stage4' in raw['params']['projector']  # checkpointed with the student
  exported = methods.export_student(state.params)
  assert jax.tree.structure(exported) == jax.tree.structure(state.params['student'])
  # What a run directory's student restore reads (teacher.load_run_model: raw['params']['student'])
  # is exactly the exported student.
  got = jax.tree.leaves(raw['params']['student'])
  want = jax.tree.leaves(nnx.to_pure_dict(exported))
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with open(os.path.join(run_dir, 'config.json')) as f:
    assert json.load(f)['method'] == 'fd'
