"""method=scalekd in the fused step: 8 devices == 1 device, CAPs trained, teacher frozen."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lkd_jax import models, optim, sharding, train
from lkd_jax import step as step_lib
from lkd_jax.data import synthetic
from lkd_jax.distill import methods, projectors
from lkd_jax.models.swin import SwinTransformer
from tests.conftest import tiny_run_config


def _setup():
  cfg = tiny_run_config(method='scalekd', **{'teacher.name': 'swin_atto', 'data.image_size': 64})
  cfg.update(scalekd_heads=(2, 4))
  cfg.optim.warmup_steps = 0
  student = models.create('resnet_atto', num_classes=10, seed=0)  # s3 4x4x64, s4 2x2x128
  # Swin with stage-3 maps 4x4x32 and a 2x2x64 final map at 64 px.
  teacher = nnx.jit(lambda: SwinTransformer(
      num_classes=10, img_size=64, window_size=4, embed_dim=8, depths=(1, 1, 1, 1),
      num_heads=(1, 1, 2, 2), rngs=nnx.Rngs(1)))()
  t_graph, t_state = nnx.split(teacher)
  proj = methods.build_projector(cfg, projectors.feature_shapes(student, 64),
                                 projectors.feature_shapes((t_graph, t_state), 64), cfg.seed)
  tx, lr_fn = optim.make(cfg, 10)
  state, graphs = train._init_state(cfg, student, proj, tx)
  fn = functools.partial(step_lib.train_step, graphs=graphs._replace(teacher=t_graph), tx=tx,
                         lr_fn=lr_fn, cfg=cfg)
  images, labels = synthetic.make_split(0, 'train', 16, 64)
  return fn, state, t_state, {'image': images, 'label': labels}


def _step(mesh, fn, state, t_state, batch):
  repl, bsh = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  jitted = jax.jit(fn, in_shardings=(repl, repl, bsh), out_shardings=(repl, repl))
  new, metrics = jitted(*sharding.put_replicated((state, t_state), mesh),
                        sharding.global_batch(batch, mesh))
  return jax.device_get(new), jax.device_get(metrics)


def test_scalekd_step_eight_devices_match_one_and_train_the_caps():
  fn, state, t_state, batch = _setup()
  assert set(state.params['projector']) == {'s3_spatial', 's3_frequency', 's4_spatial',
                                            's4_frequency'}
  before_teacher = jax.device_get(t_state)
  s8, m8 = _step(sharding.make_mesh(), fn, state, t_state, batch)
  s1, m1 = _step(sharding.make_mesh(jax.devices()[:1]), fn, state, t_state, batch)
  # The CAP BatchNorm and the DFM sums read the global batch, so the loss and its gradient do not
  # depend on the device count. (Parameters are not compared: Adam's first step is lr * sign(g),
  # which turns float noise in the exactly-zero gradients of spec §3 into +-lr.)
  for k in ('loss', 'ce', 'kd', 's3_spatial', 's3_frequency', 's4_spatial', 's4_frequency',
            'grad_norm'):
    assert np.isfinite(m8[k]) and m8[k] > 0, k
    np.testing.assert_allclose(m8[k], m1[k], rtol=1e-4, err_msg=k)
  for name, caps in s8.params['projector'].items():  # every CAP, both stages, was optimised
    moved = max(float(jnp.abs(a - b).max()) for a, b in
                zip(jax.tree.leaves(caps), jax.tree.leaves(state.params['projector'][name])))
    assert moved > 1e-6, name
  for a, b in zip(jax.tree.leaves(before_teacher), jax.tree.leaves(t_state)):
    assert np.array_equal(np.asarray(a), np.asarray(b))
