"""The fused step: sharding invariance, frozen teacher, zero teacher gradient."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lkd_jax import models, optim, sharding, train
from lkd_jax import step as step_lib
from lkd_jax.data import synthetic
from tests.conftest import tiny_run_config


def _setup(cfg):
  student = models.create(cfg.model.name, num_classes=10, seed=0)
  teacher = models.create('slak_atto', num_classes=10, seed=1)
  t_graph, t_state = nnx.split(teacher)
  tx, lr_fn = optim.make(cfg, 10)
  state, graphs = train.init_state(cfg, student, None, tx)
  graphs = graphs._replace(teacher=t_graph)
  fn = functools.partial(step_lib.train_step, graphs=graphs, tx=tx, lr_fn=lr_fn, cfg=cfg)
  images, labels = synthetic.make_split(0, 'train', 16, 32)
  return fn, state, t_state, {'image': images, 'label': labels}, graphs


def _run(mesh, fn, state, t_state, batch, steps=2):
  repl, bsh = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  jitted = jax.jit(fn, in_shardings=(repl, repl, bsh), out_shardings=(repl, repl))
  state, t_state = sharding.put_replicated((state, t_state), mesh)
  out = []
  for _ in range(steps):
    state, metrics = jitted(state, t_state, sharding.global_batch(batch, mesh))
    out.append(jax.device_get(metrics))
  return jax.device_get(state), out, t_state


@pytest.mark.heavy
def test_eight_devices_match_one_device():
  cfg = tiny_run_config(method='kd', **{'teacher.name': 'slak_atto'})
  fn, state, t_state, batch, _ = _setup(cfg)
  s8, m8, _ = _run(sharding.make_mesh(), fn, state, t_state, batch)
  s1, m1, _ = _run(sharding.make_mesh(jax.devices()[:1]), fn, state, t_state, batch)
  assert len(sharding.make_mesh().devices) == 8
  for a, b in zip(m8, m1):
    np.testing.assert_allclose(a['loss'], b['loss'], rtol=1e-5)
    np.testing.assert_allclose(a['kd'], b['kd'], rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(s8), jax.tree.leaves(s1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  moved = max(float(jnp.abs(a - b).max()) for a, b in
              zip(jax.tree.leaves(s8.params), jax.tree.leaves(state.params)))
  assert moved > 1e-5, 'the step did not update the student'


@pytest.mark.heavy
def test_teacher_unchanged_and_gets_zero_gradient():
  cfg = tiny_run_config(method='kd', **{'teacher.name': 'slak_atto'})
  fn, state, t_state, batch, graphs = _setup(cfg)
  before = jax.device_get(t_state)
  _, _, t_after = _run(sharding.make_mesh(), fn, state, t_state, batch, steps=3)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(t_after))):
    assert np.array_equal(np.asarray(a), np.asarray(b))

  x, targets = step_lib.prepare_batch(batch, jax.random.key(0), cfg)

  def loss_of_teacher(ts):
    t_out = step_lib.teacher_forward(graphs.teacher, ts, x, jnp.float32)
    return step_lib.student_loss(state.params, state.batch_stats, graphs, t_out, x, targets,
                                 jax.random.key(1), cfg)[0]

  grads = jax.grad(loss_of_teacher)(t_state)
  leaves = [g for g in jax.tree.leaves(grads) if jnp.issubdtype(g.dtype, jnp.floating)]
  assert leaves and all(not np.any(np.asarray(g)) for g in leaves)
  # The same loss does depend on the teacher's outputs (the zero is the stop_gradient, not a no-op).
  other = jax.tree.map(lambda v: v * 1.5 if jnp.issubdtype(v.dtype, jnp.floating) else v, t_state)
  assert abs(float(loss_of_teacher(other)) - float(loss_of_teacher(t_state))) > 1e-6
