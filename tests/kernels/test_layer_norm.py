"""The mat-vec LayerNorm statistics give nnx's reduction output and gradients; `auto` per platform."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lkd_jax import kernels
from lkd_jax.kernels import Kernels
from lkd_jax.models import layers


def _ln(dim: int, form: str, seed: int) -> layers.LayerNorm:
  """A LayerNorm computing its statistics in `form`, with random scale and bias."""
  r = np.random.default_rng(seed)
  ln = layers.layer_norm(dim, 1e-6, nnx.Rngs(0), Kernels(layer_norm=form))
  ln.scale[...] = jnp.asarray(r.uniform(0.5, 1.5, dim), jnp.float32)
  ln.bias[...] = jnp.asarray(r.standard_normal(dim), jnp.float32)
  return ln


def _run(ln, x):
  graph, state = nnx.split(ln)

  def loss(state, x):
    y = nnx.merge(graph, state)(x)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.shape[-1], dtype=jnp.float32)), y
  (_, y), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(state, x)
  forward = jax.make_jaxpr(lambda x: nnx.merge(graph, state)(x))(x)
  backward = jax.make_jaxpr(jax.grad(lambda x: jnp.sum(nnx.merge(graph, state)(x) ** 2)))(x)
  return y, grads, str(forward), str(backward)  # nested calls (custom_vjp) included.


def _rel(a, b):
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-12))


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_dot_reduce_is_dot_without_gradient_and_reduce_with_one(dtype):
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 3, 24)) * 3 + 2, dtype)  # off-centre.
  ln = _ln(24, 'dot/reduce', 0)
  assert isinstance(ln, nnx.LayerNorm)  # same parameters and checkpoint layout as nnx's.
  y, (gs, gx), forward, backward = _run(ln, x)
  ry, (rgs, rgx), rforward, _ = _run(_ln(24, 'reduce', 0), x)
  assert 'dot_general' in forward and 'dot_general' not in rforward
  assert 'dot_general' not in backward  # differentiated: reductions, forward and backward.
  assert y.dtype == ry.dtype == jnp.float32 and gx.dtype == x.dtype
  tol = 1e-5 if dtype == jnp.float32 else 1e-2
  assert _rel(y, ry) <= tol and _rel(gx, rgx) <= tol
  for a, b in zip(jax.tree.leaves(gs), jax.tree.leaves(rgs)):
    assert _rel(a, b) <= tol


def test_auto_is_dot_reduce_on_cpu_only_and_unknown_names_are_refused():
  assert kernels.resolve({}, 'cpu').layer_norm == 'dot/reduce'
  assert kernels.resolve({}, 'gpu').layer_norm == kernels.resolve({}, 'tpu').layer_norm == 'reduce'
  assert kernels.resolve({'layer_norm_impl': 'reduce'}, 'cpu').layer_norm == 'reduce'
  with pytest.raises(ValueError, match='Unknown layer_norm impl'):
    kernels.resolve({'layer_norm_impl': 'dot'}, 'cpu')
