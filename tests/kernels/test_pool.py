"""pool.max_pool gives reduce_window's output and select_and_scatter's gradient bit for bit, ties included."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lkd_jax.kernels import pool


def _reference(x, k, s, p):
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-jnp.inf)
  return nnx.max_pool(xp, (k, k), strides=(s, s))  # XLA reduce_window; grad = select_and_scatter.


@pytest.mark.parametrize('shape,k,s,p', [((2, 9, 10, 3), 3, 2, 1),   # ResNet stem pool, odd map
                                         ((1, 8, 8, 2), 3, 2, 1),
                                         ((1, 7, 6, 2), 2, 2, 0),
                                         ((1, 6, 7, 2), 3, 1, 1)])
@pytest.mark.parametrize('ties', [False, True])
def test_max_pool_matches_reduce_window(shape, k, s, p, ties):
  r = np.random.default_rng(0)
  x = jnp.asarray(r.standard_normal(shape), jnp.float32)
  x = x + jnp.arange(shape[1])[:, None, None] + jnp.arange(shape[2])[:, None]  # maxima shared by windows
  if ties:  # ReLU'd, rounded input: many equal maxima; torch and XLA send the gradient to the first.
    x = jnp.round(jnp.maximum(x, 0.0))
  y, ry = jax.jit(pool.max_pool, static_argnums=(1, 2, 3))(x, k, s, p), _reference(x, k, s, p)
  assert y.shape == ry.shape and bool(jnp.all(y == ry))
  w = jnp.asarray(r.standard_normal(y.shape), jnp.float32)
  g = jax.jit(jax.grad(lambda x: jnp.sum(pool.max_pool(x, k, s, p) * w)))(x)
  rg = jax.grad(lambda x: jnp.sum(_reference(x, k, s, p) * w))(x)
  np.testing.assert_array_equal(g, rg)  # same summation order: results reproduce across versions.
