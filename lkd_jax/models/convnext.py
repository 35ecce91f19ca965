"""Official ConvNeXt (facebookresearch/ConvNeXt layout: `dwconv` 7x7 with bias, LN eps 1e-6, layer scale).

Same macro structure as SLaK (`downsample_layers`, `stages`, `norm`, `head`), so the class reuses
`slak.SLaK` and swaps the block: x + drop_path(gamma * pwconv2(GELU(pwconv1(norm(dwconv(x)))))).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lkd_jax.kernels import Kernels
from lkd_jax.models import layers
from lkd_jax.models.registry import register
from lkd_jax.models.slak import LN_EPS, SLaK


class ConvNeXtBlock(nnx.Module):
  """ConvNeXt block with a 7x7 depthwise conv with bias (reference `Block`)."""

  def __init__(self, dim: int, drop_path: float, layer_scale: float, *, kernels: Kernels,
               rngs: nnx.Rngs):
    self.dwconv = layers.DepthwiseConv(dim, (7, 7), use_bias=True, kernels=kernels, rngs=rngs)
    self.norm = layers.layer_norm(dim, LN_EPS, rngs, kernels)
    self.pwconv1 = nnx.Linear(dim, 4 * dim, rngs=rngs)
    self.pwconv2 = nnx.Linear(4 * dim, dim, rngs=rngs)
    self.gamma = nnx.Param(jnp.full((dim,), layer_scale)) if layer_scale > 0 else None
    self.drop_path = layers.DropPath(drop_path, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.pwconv2(layers.gelu(self.pwconv1(self.norm(self.dwconv(x)))))
    if self.gamma is not None:
      y = y * self.gamma[...]
    return x + self.drop_path(y, train)


class ConvNeXt(SLaK):
  """Official ConvNeXt; returns (logits, {'stage1'..'stage4'})."""

  def __init__(self, *, num_classes: int, depths, dims, drop_path_rate: float = 0.0,
               layer_scale_init_value: float = 1e-6, head_init_scale: float = 1.0,
               in_chans: int = 3, kernels: Kernels = Kernels(), rngs: nnx.Rngs):
    super().__init__(num_classes=num_classes, depths=depths, dims=dims, kernel_size=(7,) * 5,
                     drop_path_rate=drop_path_rate, layer_scale_init_value=layer_scale_init_value,
                     head_init_scale=head_init_scale, in_chans=in_chans, kernels=kernels, rngs=rngs)

  def make_block(self, stage: int, dim: int, drop_path: float, layer_scale: float,
                 rngs: nnx.Rngs) -> nnx.Module:
    """A ConvNeXt block (7x7 depthwise conv with bias, no BatchNorm)."""
    return ConvNeXtBlock(dim, drop_path, layer_scale, kernels=self.kernels, rngs=rngs)


def _convnext(depths, dims):
  def build(*, num_classes: int, rngs: nnx.Rngs, **kw) -> ConvNeXt:
    return ConvNeXt(num_classes=num_classes, depths=depths, dims=dims, rngs=rngs, **kw)
  return build


register('convnext_t')(_convnext((3, 3, 9, 3), (96, 192, 384, 768)))
register('convnext_s')(_convnext((3, 3, 27, 3), (96, 192, 384, 768)))
register('convnext_b')(_convnext((3, 3, 27, 3), (128, 256, 512, 1024)))
register('convnext_atto')(_convnext((1, 1, 2, 1), (16, 32, 64, 128)))  # tiny, = convnext_ref's shape.
