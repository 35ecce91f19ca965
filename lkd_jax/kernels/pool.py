"""Max pooling (NHWC, -inf padding, torch's nn.MaxPool2d) with a scatter-free backward.

XLA differentiates `reduce_window(max)` into `select_and_scatter`, which XLA:CPU runs slowly: ResNet's
3x3/2 stem pool took 141 ms fwd+bwd at batch 8 (112x112x64) against PyTorch's 45 ms
(benchmarks/max_pool.py). Here the forward is the max of the k*k strided window slices, and it keeps
which slice won (the first one, as torch and select_and_scatter break ties) as int8; the backward
routes the gradient through k*k strided pads of the masked output gradient: 23 ms. The pads are
summed in the order select_and_scatter adds windows, so the gradient is bit-identical to XLA's
(tests/kernels/test_pool.py).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _out_size(n: int, k: int, s: int, p: int) -> int:
  return (n + 2 * p - k) // s + 1


def _slices(x: jax.Array, k: int, s: int, p: int) -> list[jax.Array]:
  """The k*k strided window slices of the -inf padded `x`, row-major over the window."""
  _, h, w, _ = x.shape
  ho, wo = _out_size(h, k, s, p), _out_size(w, k, s, p)
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-jnp.inf)
  return [xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] for i in range(k) for j in range(k)]


def _max(slices: list[jax.Array]) -> jax.Array:
  return functools.reduce(jnp.maximum, slices)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, k: int, stride: int, padding: int) -> jax.Array:
  """k x k max pool with `stride` and `padding` (-inf) on both spatial axes of NHWC `x`."""
  return _max(_slices(x, k, stride, padding))


def _max_pool_fwd(x, k, stride, padding):
  slices = _slices(x, k, stride, padding)
  y = _max(slices)
  winner = jnp.full(y.shape, k * k - 1, jnp.int8)
  for i in range(k * k - 2, -1, -1):  # descending, so the first slice equal to the max wins.
    winner = jnp.where(slices[i] == y, jnp.int8(i), winner)
  return y, (winner, x.shape)


def _max_pool_bwd(k, stride, padding, res, g):
  winner, (_, h, w, _) = res
  (_, ho, wo, _), hp, wp = g.shape, h + 2 * padding, w + 2 * padding
  zero = jnp.zeros((), g.dtype)
  total = None
  for idx in reversed(range(k * k)):  # windows in row-major output order, as select_and_scatter adds.
    i, j = divmod(idx, k)
    routed = lax.pad(jnp.where(winner == idx, g, zero), zero,
                     ((0, 0, 0), (i, hp - i - stride * (ho - 1) - 1, stride - 1),
                      (j, wp - j - stride * (wo - 1) - 1, stride - 1), (0, 0, 0)))
    total = routed if total is None else total + routed
  return (total[:, padding:padding + h, padding:padding + w],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
