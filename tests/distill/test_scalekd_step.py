"""method=scalekd: the fused step's loss on 8 devices == on 1; a short run trains and checkpoints the CAPs."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lkd_jax import checkpoints, models, optim, sharding, train
from lkd_jax import teacher as teacher_lib
from lkd_jax import step as step_lib
from lkd_jax.data import synthetic
from lkd_jax.convert import save_converted
from lkd_jax.distill import methods, projectors
from lkd_jax.kernels import Kernels
from lkd_jax.models.swin import SwinTransformer
from tests.conftest import tiny_run_config


def _setup():
  cfg = tiny_run_config(method='scalekd', **{'teacher.name': 'swin_atto', 'data.image_size': 64})
  cfg.update(scalekd_heads=(2, 4))
  cfg.mix.update(mixup_alpha=0.0, cutmix_alpha=0.0)  # a smaller program to compile
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
  state, graphs = train.init_state(cfg, student, proj, tx)
  fn = functools.partial(step_lib.train_step, graphs=graphs._replace(teacher=t_graph), tx=tx,
                         lr_fn=lr_fn, cfg=cfg)
  images, labels = synthetic.make_split(0, 'train', 16, 64)
  return fn, state, t_state, {'image': images, 'label': labels}


def _loss(mesh, fn, state, t_state, batch):
  """The fused step's loss terms at `state` (what train_step's metrics report), on `mesh`."""
  cfg, graphs = fn.keywords['cfg'], fn.keywords['graphs']

  def loss(state, t_state, batch):
    rng = jax.random.fold_in(jax.random.key(cfg.seed), state.step)
    mix_rng, drop_rng = jax.random.split(rng)
    x, targets = step_lib.prepare_batch(batch, mix_rng, cfg)
    t_out = step_lib.teacher_forward(graphs.teacher, t_state, x, jnp.float32)
    _, (metrics, _) = step_lib.student_loss(state.params, state.batch_stats, graphs, t_out, x,
                                            targets, drop_rng, cfg, step=state.step,
                                            teacher_state=t_state)
    return metrics

  repl, bsh = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  jitted = jax.jit(loss, in_shardings=(repl, repl, bsh), out_shardings=repl)
  return jax.device_get(jitted(*sharding.put_replicated((state, t_state), mesh),
                               sharding.global_batch(batch, mesh)))


def test_scalekd_loss_on_eight_devices_matches_one_device():
  fn, state, t_state, batch = _setup()
  assert set(state.params['projector']) == {'s3_spatial', 's3_frequency', 's4_spatial',
                                            's4_frequency'}
  m8 = _loss(sharding.make_mesh(), fn, state, t_state, batch)
  m1 = _loss(sharding.make_mesh(jax.devices()[:1]), fn, state, t_state, batch)
  # The CAP BatchNorm and the DFM sums read the global batch: no dependence on the device count.
  for k in ('loss', 'ce', 'kd', 's3_spatial', 's3_frequency', 's4_spatial', 's4_frequency'):
    assert np.isfinite(m8[k]) and m8[k] > 0, k
    np.testing.assert_allclose(m8[k], m1[k], rtol=1e-4, err_msg=k)


@pytest.mark.heavy
def test_scalekd_run_end_to_end_checkpoints_and_exports(tmp_path):
  """train_and_evaluate with a converted Swin teacher: 2 steps, eval, CAPs checkpointed, student exported."""
  teacher_kw = {'img_size': 64, 'window_size': 4}
  teacher = models.create('swin_atto', num_classes=10, seed=1, **teacher_kw)
  save_converted(teacher, tmp_path / 'teacher', {'model': 'swin_atto', 'num_classes': 10,
                                                  'model_kwargs': teacher_kw})
  cfg = tiny_run_config(method='scalekd', total_steps=2, checkpoint_every=2,
                        **{'teacher.name': 'swin_atto', 'teacher.checkpoint': str(tmp_path / 'teacher'),
                           'data.image_size': 64})
  cfg.teacher.kwargs = teacher_kw
  cfg.mix.update(mixup_alpha=0.0, cutmix_alpha=0.0)  # a smaller program to compile
  cfg.scalekd_heads = (4, 8)  # swin_atto widths 64 (stage 3), 128 (final)
  result = train.train_and_evaluate(cfg, str(tmp_path / 'run'))
  assert result['step'] == 2 and np.isfinite(result['loss'])
  with checkpoints.manager(str(tmp_path / 'run' / 'checkpoints')) as mngr:
    raw = checkpoints.restore_raw(mngr)
  assert set(raw['params']['projector']) == {'s3_spatial', 's3_frequency', 's4_spatial',
                                             's4_frequency'}
  # Every CAP of both stages was optimised: compare with the projectors the run started from.
  t_graph, t_state = nnx.split(teacher)
  init = methods.build_projector(
      cfg, projectors.feature_shapes(nnx.eval_shape(lambda: models.create('resnet_atto',
                                                                         num_classes=10)), 64),
      projectors.feature_shapes((t_graph, t_state), 64), cfg.seed)
  init = nnx.to_pure_dict(nnx.state(init, nnx.Param))
  for name, caps in raw['params']['projector'].items():
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                zip(jax.tree.leaves(caps), jax.tree.leaves(init[name])))
    assert moved > 1e-6, name
  student, step = teacher_lib.load_run_model(str(tmp_path / 'run'), Kernels())
  assert step == 2 and type(student).__name__ == 'ResNet'  # the export is the student alone
