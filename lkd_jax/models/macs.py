"""Dense multiply-accumulate count of a forward pass, read from the jaxpr (convolutions and matmuls).

XLA cost analysis is not used: the runtime depthwise implementation may be shifted sums, FFTs or a
kernel cropped to the taps that reach the map, and LayerNorm statistics may be mat-vec products. For
counting, `layers.depthwise_conv` is swapped for a plain grouped convolution with the whole kernel
and LayerNorm takes nnx's reductions, so the count is the dense architecture's.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lkd_jax.models import layers


def _sub_jaxprs(eqn) -> list[Any]:
  subs = []
  for v in eqn.params.values():
    for item in (v if isinstance(v, (tuple, list)) else (v,)):
      if hasattr(item, 'eqns'):
        subs.append(item)
      elif hasattr(getattr(item, 'jaxpr', None), 'eqns'):
        subs.append(item.jaxpr)
  return subs


def jaxpr_macs(jaxpr) -> int:
  """MACs of every conv_general_dilated and dot_general in a jaxpr (recursing into sub-jaxprs)."""
  total = 0
  for eqn in jaxpr.eqns:
    out = eqn.outvars[0].aval.shape if eqn.outvars else ()
    if eqn.primitive.name == 'conv_general_dilated':
      rhs = eqn.invars[1].aval.shape
      spec = eqn.params['dimension_numbers'].rhs_spec  # (out feature, in feature, *spatial)
      total += math.prod(out) * rhs[spec[1]] * math.prod(rhs[i] for i in spec[2:])
    elif eqn.primitive.name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += math.prod(out) * math.prod(lhs[i] for i in contract)
    for sub in _sub_jaxprs(eqn):
      total += jaxpr_macs(sub)
  return total


def input_size(model: nnx.Module) -> int:
  """Square input side: 224, or the fixed size a model bakes in (tiny ViTs: 64)."""
  grid = getattr(model, 'grid', None)
  return grid * model.patch_embed.proj.kernel_size[0] if grid else 224


def count_macs(model: nnx.Module, size: int | None = None, batch: int = 1) -> int:
  """Dense MACs of one eval forward of `model` (concrete or abstract) on `batch` images of size^2."""
  size = size or input_size(model)
  graphdef, state = nnx.split(model)
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  runtime_impl, runtime_ln = layers.depthwise_conv, layers.get_layer_norm_impl()
  layers.depthwise_conv = _dense_depthwise  # count the full kernels, whatever runs in practice.
  layers.set_layer_norm_impl('reduce')  # LayerNorm statistics are not matmuls, whatever computes them.
  try:
    jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x, train=False)[0])(state, x)
  finally:
    layers.depthwise_conv = runtime_impl
    layers.set_layer_norm_impl(runtime_ln)
  return jaxpr_macs(jaxpr.jaxpr)


def _dense_depthwise(x: jax.Array, kernel: jax.Array, impl: str | None = None) -> jax.Array:
  """Plain grouped conv with the whole (kh, kw, C) kernel: what 'dense MACs' means here."""
  del impl
  kh, kw, c = kernel.shape
  return jax.lax.conv_general_dilated(
      x, kernel[:, :, None, :].astype(x.dtype), (1, 1), ((kh // 2, kh // 2), (kw // 2, kw // 2)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c)


def count_params(model: nnx.Module) -> int:
  """Number of parameters (nnx.Param elements; BatchNorm statistics excluded, as torch counts)."""
  return sum(math.prod(v.get_value().shape) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
