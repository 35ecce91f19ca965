"""CSWin Transformer (microsoft/CSWin-Transformer `models/cswin.py`, = VITA-Group/SLaK `cswin.py`).

Names: `stage1_conv_embed.{0,2}` (conv 7x7/4, LayerNorm; index 1 is the parameter-free Rearrange),
`stage{1..4}.j.{qkv,norm1,proj,attns.b.get_v,mlp.{fc1,fc2},norm2}`, `merge{1..3}.{conv,norm}`, `norm`, `head`.
Cross-shaped window attention: the channels (and heads) split in halves; half 0 attends in stripes of
full height x split_size columns, half 1 in split_size rows x full width; a block whose resolution
equals its split size, and every last-stage block, has one full-window branch. LePE adds a 3x3
depthwise conv (with bias, zero padding at each window's border) of V to the attention output.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lkd_jax.kernels import Kernels
from lkd_jax.models import layers
from lkd_jax.models.registry import register

LN_EPS = 1e-5


def _to_windows(x: jax.Array, hs: int, ws: int) -> jax.Array:
  """(B, H, W, C) -> (B * nW, hs, ws, C), windows row-major (reference img2windows)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // hs, hs, w // ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, hs, ws, c)


def _from_windows(x: jax.Array, h: int, w: int) -> jax.Array:
  """Inverse of `_to_windows` (reference windows2img)."""
  _, hs, ws, c = x.shape
  x = x.reshape(-1, h // hs, w // ws, hs, ws, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, h, w, c)


class LePEAttention(nnx.Module):
  """Attention inside (hs x ws) windows plus the locally-enhanced positional encoding `get_v`."""

  def __init__(self, dim: int, resolution: int, idx: int, split: int, heads: int,
               *, kernels: Kernels, rngs: nnx.Rngs):
    self.window = {-1: (resolution, resolution), 0: (resolution, split), 1: (split, resolution)}[idx]
    self.heads = heads
    self.scale = (dim // heads) ** -0.5
    self.get_v = layers.DepthwiseConv(dim, (3, 3), use_bias=True, kernels=kernels, rngs=rngs)

  def _heads(self, x: jax.Array) -> jax.Array:
    bw, hs, ws, c = x.shape  # -> (B*nW, heads, hs*ws, head_dim)
    return x.reshape(bw, hs * ws, self.heads, c // self.heads).transpose(0, 2, 1, 3)

  def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    _, h, w, c = q.shape
    hs, ws = self.window
    q, k, v = (_to_windows(t, hs, ws) for t in (q, k, v))
    lepe = self._heads(self.get_v(v))
    out = layers.attention(self._heads(q), self._heads(k), self._heads(v), self.scale) + lepe
    return _from_windows(out.transpose(0, 2, 1, 3).reshape(-1, hs, ws, c), h, w)


class CSWinBlock(nnx.Module):
  """x + proj(cross-shaped attention(norm1(x))); x + mlp(norm2(x)); x is (B, H, W, C)."""

  def __init__(self, dim: int, resolution: int, heads: int, split: int, mlp_ratio: float,
               qkv_bias: bool, drop_path: float, last_stage: bool, *, kernels: Kernels,
               rngs: nnx.Rngs):
    self.qkv = nnx.Linear(dim, 3 * dim, use_bias=qkv_bias, rngs=rngs)
    self.norm1 = layers.layer_norm(dim, LN_EPS, rngs, kernels)
    self.proj = nnx.Linear(dim, dim, rngs=rngs)
    if last_stage or resolution == split:
      self.attns = nnx.List([LePEAttention(dim, resolution, -1, split, heads, kernels=kernels,
                                           rngs=rngs)])
    else:
      self.attns = nnx.List([LePEAttention(dim // 2, resolution, i, split, heads // 2,
                                           kernels=kernels, rngs=rngs)
                             for i in range(2)])
    self.mlp = layers.Mlp(dim, int(dim * mlp_ratio), rngs=rngs)
    self.norm2 = layers.layer_norm(dim, LN_EPS, rngs, kernels)
    self.drop_path = layers.DropPath(drop_path, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c = x.shape[-1]
    q, k, v = jnp.split(self.qkv(self.norm1(x)), 3, axis=-1)
    if len(self.attns) == 1:
      y = self.attns[0](q, k, v)
    else:
      h = c // 2
      y = jnp.concatenate([self.attns[0](q[..., :h], k[..., :h], v[..., :h]),
                           self.attns[1](q[..., h:], k[..., h:], v[..., h:])], axis=-1)
    x = x + self.drop_path(self.proj(y), train)
    return x + self.drop_path(self.mlp(self.norm2(x)), train)


class MergeBlock(nnx.Module):
  """Conv 3x3 stride 2 (padding 1) + LayerNorm between stages."""

  def __init__(self, dim: int, out_dim: int, *, kernels: Kernels, rngs: nnx.Rngs):
    self.conv = layers.conv(dim, out_dim, 3, stride=2, kernels=kernels, rngs=rngs)
    self.norm = layers.layer_norm(out_dim, LN_EPS, rngs, kernels)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(self.conv(x))


class CSWinTransformer(nnx.Module):
  """CSWin Transformer (square input of `img_size` only); feats are the stage outputs before the
  final norm.

  `kernels`: the forms every conv and LayerNorm compute with (default: XLA's own ops).
  """

  def __init__(self, *, num_classes: int, img_size: int = 224, patch_size: int = 4,
               embed_dim: int = 64, depth: Sequence[int] = (1, 2, 21, 1),
               split_size: Sequence[int] = (1, 2, 7, 7), num_heads: Sequence[int] = (2, 4, 8, 16),
               mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
               in_chans: int = 3, kernels: Kernels = Kernels(), rngs: nnx.Rngs):
    del patch_size  # The reference's stem is a fixed 7x7 stride-4 conv.
    self.stage1_conv_embed = nnx.List([
        layers.conv(in_chans, embed_dim, 7, stride=4, padding=2, kernels=kernels, rngs=rngs), None,
        layers.layer_norm(embed_dim, LN_EPS, rngs, kernels)])
    rates = iter(layers.drop_path_rates(drop_path_rate, depth))
    dim = embed_dim
    for i in range(4):
      if i:
        setattr(self, f'merge{i}', MergeBlock(dim, 2 * dim, kernels=kernels, rngs=rngs))
        dim *= 2
      setattr(self, f'stage{i + 1}', nnx.List([
          CSWinBlock(dim, img_size // 2 ** (i + 2), num_heads[i], split_size[i], mlp_ratio,
                     qkv_bias, next(rates), i == 3, kernels=kernels, rngs=rngs)
          for _ in range(depth[i])]))
    self.norm = layers.layer_norm(dim, LN_EPS, rngs, kernels)
    self.head = nnx.Linear(dim, num_classes, rngs=rngs)
    layers.trunc_normal_init(self, rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    x = self.stage1_conv_embed[2](self.stage1_conv_embed[0](x))
    feats = {}
    for i in range(4):
      if i:
        x = getattr(self, f'merge{i}')(x)
      for blk in getattr(self, f'stage{i + 1}'):
        x = blk(x, train)
      feats[f'stage{i + 1}'] = x
    return self.head(self.norm(x).mean(axis=(1, 2))), feats


def _cswin(**cfg):
  def build(*, num_classes: int, rngs: nnx.Rngs, **kw) -> CSWinTransformer:
    return CSWinTransformer(num_classes=num_classes, rngs=rngs, **{**cfg, **kw})
  return build


register('cswin_t')(_cswin(embed_dim=64, depth=(1, 2, 21, 1)))  # CSWin_64_12211_tiny_224.
register('cswin_atto')(_cswin(embed_dim=16, depth=(1, 1, 1, 1)))  # = cswin_ref's shape, 224 input.
