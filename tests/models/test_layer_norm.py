"""The mat-vec LayerNorm statistics give nnx's reduction output and gradients; the switch works."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lkd_jax.models import layers


def _run(impl, x, ln):
  layers.set_layer_norm_impl(impl)
  try:
    graph, state = nnx.split(ln)

    def loss(state, x):
      y = nnx.merge(graph, state)(x)
      return jnp.sum(jnp.sin(y) * jnp.arange(y.shape[-1], dtype=jnp.float32)), y
    (_, y), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(state, x)
    jaxpr = jax.make_jaxpr(lambda x: nnx.merge(graph, state)(x))(x)
  finally:
    layers.set_layer_norm_impl('auto')
  return y, grads, str(jaxpr)  # nested calls (custom_vjp) included.


def _rel(a, b):
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-12))


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_dot_statistics_match_nnx_layer_norm(dtype):
  r = np.random.default_rng(0)
  ln = layers.layer_norm(24, 1e-6, nnx.Rngs(0))
  assert isinstance(ln, nnx.LayerNorm)  # same parameters and checkpoint layout as nnx's.
  ln.scale[...] = jnp.asarray(r.uniform(0.5, 1.5, 24), jnp.float32)
  ln.bias[...] = jnp.asarray(r.standard_normal(24), jnp.float32)
  x = jnp.asarray(r.standard_normal((2, 5, 3, 24)) * 3 + 2, dtype)  # off-centre: exercises E[x]^2.
  y, (gs, gx), text = _run('dot', x, ln)
  ry, (rgs, rgx), rtext = _run('reduce', x, ln)
  assert 'dot_general' in text and 'dot_general' not in rtext
  assert y.dtype == ry.dtype == jnp.float32 and gx.dtype == x.dtype
  tol = 1e-5 if dtype == jnp.float32 else 1e-2
  assert _rel(y, ry) <= tol and _rel(gx, rgx) <= tol
  for a, b in zip(jax.tree.leaves(gs), jax.tree.leaves(rgs)):
    assert _rel(a, b) <= tol


def test_pair_is_dot_without_gradient_and_reduce_with_one():
  r = np.random.default_rng(1)
  ln = layers.layer_norm(16, 1e-6, nnx.Rngs(0))
  ln.bias[...] = jnp.asarray(r.standard_normal(16), jnp.float32)
  x = jnp.asarray(r.standard_normal((2, 3, 4, 16)) * 3 + 2, jnp.float32)
  y, (gs, gx), text = _run('dot/reduce', x, ln)
  ry, (rgs, rgx), _ = _run('reduce', x, ln)
  assert 'dot_general' in text  # the forward alone: mat-vec statistics.
  assert _rel(y, ry) <= 1e-5 and _rel(gx, rgx) <= 1e-5
  for a, b in zip(jax.tree.leaves(gs), jax.tree.leaves(rgs)):
    assert _rel(a, b) <= 1e-5
  layers.set_layer_norm_impl('dot/reduce')
  try:
    graph, state = nnx.split(ln)
    grad = jax.make_jaxpr(jax.grad(lambda x: jnp.sum(nnx.merge(graph, state)(x) ** 2)))(x)
  finally:
    layers.set_layer_norm_impl('auto')
  assert 'dot_general' not in str(grad)  # differentiated: reductions, forward and backward.


def test_auto_is_dot_reduce_on_cpu_and_setter_rejects_unknown():
  ln = layers.layer_norm(8, 1e-6, nnx.Rngs(0))
  _, _, text = _run('auto', jnp.ones((1, 2, 2, 8)), ln)
  assert ('dot_general' in text) == (jax.default_backend() == 'cpu')
  assert layers._LN_SWITCH.resolve('auto', 'cpu') == 'dot/reduce'
  with pytest.raises(ValueError, match='Unknown layer_norm impl'):
    layers.set_layer_norm_impl('fast')
