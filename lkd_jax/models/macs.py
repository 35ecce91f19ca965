"""Dense multiply-accumulate count of a forward pass, read from the jaxpr (convolutions and matmuls).

XLA cost analysis is not used: the forms a model runs with may compute a depthwise conv as shifted
sums, FFTs or a kernel cropped to the taps that reach the map, and LayerNorm statistics as mat-vec
products. The count builds the model with `COUNTING` kernels instead: XLA's grouped convolution with
the whole kernel, nnx's LayerNorm reductions and XLA's dense convs, so it is the dense architecture's.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lkd_jax.kernels import DepthwiseOptions, Kernels
from lkd_jax.models import registry

# XLA's ops, the depthwise kernels uncropped: what 'dense MACs' means here.
COUNTING = Kernels(depthwise_options=DepthwiseOptions(crop=False))


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


def input_size(model: nnx.Module) -> tuple[int, int]:
  """Input (height, width): 224 x 224, or the size a ViT bakes in (its patch grid x patch size)."""
  grid = getattr(model, 'grid', None)
  if not grid:
    return 224, 224
  patch = model.patch_embed.proj.kernel_size[0]
  return grid[0] * patch, grid[1] * patch


def count_macs(name: str, size: int | None = None, batch: int = 1, num_classes: int = 1000,
               **model_kwargs: Any) -> int:
  """Dense MACs of one eval forward of registered model `name` (built abstractly, with `COUNTING`
  kernels) on `batch` images of size^2 (default: `input_size`)."""
  model = nnx.eval_shape(lambda: registry.create(name, num_classes=num_classes, kernels=COUNTING,
                                                 **model_kwargs))
  h, w = (size, size) if size else input_size(model)
  graphdef, state = nnx.split(model)
  x = jax.ShapeDtypeStruct((batch, h, w, 3), jnp.float32)
  jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x, train=False)[0])(state, x)
  return jaxpr_macs(jaxpr.jaxpr)


def count_params(model: nnx.Module) -> int:
  """Number of parameters (nnx.Param elements; BatchNorm statistics excluded, as torch counts)."""
  return sum(math.prod(v.get_value().shape) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
