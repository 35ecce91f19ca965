"""LayerNorm statistics over the last axis: mean and variance (E[x^2] - E[x]^2, as nnx).

XLA:CPU hands a reduction to YNNPACK together with the elementwise ops that produce its input,
materialising each of them: a 7x7 shift-and-add depthwise conv followed by LayerNorm takes 23 ms
instead of 9 ms (batch 8, 56x56x96; benchmarks/layer_norm.py). A dot keeps its producers in XLA's
own fused loop. Forms (kernels.LAYER_NORM_FORMS):

- `reduce`: reductions, nnx's own LayerNorm (`auto` on GPU/TPU).
- `dot/reduce` (`auto` on CPU): two mat-vec products where no gradient flows (a frozen teacher),
  the reductions, forward and backward, where one does (the mat-vec's transpose is a K=1 matmul:
  ConvNeXt-T's train gradient was 5-7% slower with it; benchmarks/README.md, LayerNorm).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _dot_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and variance over the last axis as two mat-vec products."""
  avg = jnp.full((x.shape[-1], 1), 1.0 / x.shape[-1], x.dtype)
  mean = jnp.dot(x, avg, precision=jax.lax.Precision.HIGHEST)
  mean2 = jnp.dot(x * x, avg, precision=jax.lax.Precision.HIGHEST)
  return mean, jnp.maximum(mean2 - mean * mean, 0.0)


def _reduce_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The same statistics as reductions over the last axis."""
  mean = jnp.mean(x, -1, keepdims=True)
  return mean, jnp.maximum(jnp.mean(x * x, -1, keepdims=True) - mean * mean, 0.0)


@jax.custom_vjp
def _dot_reduce_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`_dot_stats` forward; `_reduce_stats`'s forward and backward where differentiated."""
  return _dot_stats(x)


_dot_reduce_stats.defvjp(lambda x: jax.vjp(_reduce_stats, x), lambda vjp, g: vjp(g))
_FORMS = {'reduce': _reduce_stats, 'dot/reduce': _dot_reduce_stats}


def statistics(x: jax.Array, form: str) -> tuple[jax.Array, jax.Array]:
  """Mean and variance of `x` over its last axis (keepdims), computed in `form`."""
  return _FORMS[form](x)
