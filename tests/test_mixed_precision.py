"""compute_dtype: a bfloat16 student computes in bfloat16, tracks the float32 loss, keeps float32 state."""
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from lkd_jax import sharding, train
from lkd_jax import step as step_lib
from lkd_jax.errors import SetupError
from tests.conftest import kd_setup, run_kd_steps, tiny_run_config

STEPS = 3
# bfloat16 keeps 8 mantissa bits (relative rounding 2^-9 ~ 0.2% per op); through resnet_atto and a
# KD loss over 3 steps the measured gap is ~0.1%: 2% leaves room yet catches a broken cast.
LOSS_RTOL = 2e-2


def _config(compute_dtype: str):
  return tiny_run_config(method='kd', compute_dtype=compute_dtype,
                         **{'teacher.name': 'resnet_atto', 'mix.mixup_alpha': 0.0,
                            'mix.cutmix_alpha': 0.0})


def _train(compute_dtype: str):
  state, _, losses = run_kd_steps(_config(compute_dtype), sharding.make_mesh(), STEPS)
  return losses, jax.device_get(state)


def test_bfloat16_step_tracks_float32_and_keeps_float32_state():
  f32_losses, f32_state = _train('float32')
  bf16_losses, bf16_state = _train('bfloat16')
  np.testing.assert_allclose(bf16_losses, f32_losses, rtol=LOSS_RTOL)
  assert bf16_losses != f32_losses, 'bfloat16 gave bit-identical losses: it did not take effect'
  floats = [x for x in jax.tree.leaves(bf16_state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and {x.dtype for x in floats} == {jnp.dtype(jnp.float32)}  # params, BN, opt, EMA
  moved = max(float(np.abs(a - b).max()) for a, b in
              zip(jax.tree.leaves(bf16_state.params), jax.tree.leaves(f32_state.params)))
  assert moved < 1e-2


def test_bfloat16_student_convs_and_matmuls_run_in_bfloat16():
  cfg = _config('bfloat16')
  graphs, _, _, state, _, batch = kd_setup(cfg)
  x, targets = step_lib.prepare_batch(batch, jax.random.key(0), cfg)
  t_out = (jnp.zeros((16, 10)), {})
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: step_lib.student_loss(
      p, state.batch_stats, graphs, t_out, x, targets, jax.random.key(1), cfg)[0]))(state.params)
  ops = [e for e in _eqns(jaxpr.jaxpr) if e.primitive.name in ('conv_general_dilated', 'dot_general')]
  dtypes = {(e.primitive.name, v.aval.dtype) for e in ops for v in e.invars}
  assert ('conv_general_dilated', jnp.dtype(jnp.bfloat16)) in dtypes
  assert ('dot_general', jnp.dtype(jnp.bfloat16)) in dtypes
  assert all(d == jnp.bfloat16 for _, d in dtypes), f'float32 convs/matmuls remain: {dtypes}'


def _eqns(jaxpr):
  for e in jaxpr.eqns:
    yield e
    for sub in jax.extend.core.jaxprs_in_params(e.params):
      yield from _eqns(sub)


def test_compute_dtype_auto_and_bad_names():
  assert train.resolve_compute_dtype('auto', 'cpu') == 'float32'
  assert train.resolve_compute_dtype('auto', 'tpu') == 'bfloat16'
  assert train.resolve_compute_dtype('auto', 'gpu') == 'bfloat16'
  with pytest.raises(SetupError, match="compute_dtype='float16': use one of float32, bfloat16"):
    train.resolve_compute_dtype('float16', 'gpu')
