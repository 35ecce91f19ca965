"""Swin Transformer in the timm >= 0.9 layout (`swin_tiny_patch4_window7_224`).

Names: `patch_embed.{proj,norm}`, `layers.i.downsample.{norm,reduction}` (patch merging at the start of
stage i > 0), `layers.i.blocks.j.{norm1,attn.{qkv,proj,relative_position_bias_table},norm2,mlp.{fc1,fc2}}`,
`norm`, `head.fc`. Official Microsoft / timm1 checkpoints convert with the rename in `convert/families.py`.
The relative position index and the shift mask are recomputed (numpy constants), not stored.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lkd_jax.kernels import Kernels
from lkd_jax.models import layers
from lkd_jax.models.registry import register

LN_EPS = 1e-5


@functools.lru_cache(maxsize=None)
def relative_position_index(window: int) -> np.ndarray:
  """(w*w, w*w) index into the ((2w-1)^2, heads) bias table, as timm/Swin compute it."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing='ij')).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def window_partition(x: jax.Array, window: int) -> jax.Array:
  """(B, H, W, C) -> (B * nW, window*window, C), windows in row-major order."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, window * window, c)


def window_reverse(x: jax.Array, window: int, h: int, w: int) -> jax.Array:
  """Inverse of `window_partition`."""
  c = x.shape[-1]
  x = x.reshape(-1, h // window, w // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, h, w, c)


@functools.lru_cache(maxsize=None)
def shift_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
  """(nW, N, N) additive mask: -100 between tokens from different pre-shift regions (timm)."""
  img = np.zeros((1, h, w, 1), np.float32)
  cnt = 0
  for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
    for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
      img[:, hs, ws, :] = cnt
      cnt += 1
  win = np.asarray(window_partition(img, window))[..., 0]
  diff = win[:, None, :] - win[:, :, None]
  return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


class WindowAttention(nnx.Module):
  """Multi-head self-attention inside a window with a learned relative position bias."""

  def __init__(self, dim: int, heads: int, window: int, *, rngs: nnx.Rngs):
    self.heads, self.window = heads, window
    self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
    self.proj = nnx.Linear(dim, dim, rngs=rngs)
    self.relative_position_bias_table = nnx.Param(
        nnx.initializers.truncated_normal(0.02)(rngs.params(), ((2 * window - 1) ** 2, heads)))

  def __call__(self, x: jax.Array, mask: np.ndarray | None) -> jax.Array:
    bw, n, c = x.shape
    q, k, v = self.qkv(x).reshape(bw, n, 3, self.heads, -1).transpose(2, 0, 3, 1, 4)
    idx = relative_position_index(self.window).reshape(-1)
    bias = self.relative_position_bias_table[...][idx].reshape(n, n, -1).transpose(2, 0, 1)
    if mask is not None:  # Windows are batch-major: view as (B, nW, heads, N, d), mask (nW, 1, N, N).
      nw = mask.shape[0]
      q, k, v = (t.reshape(bw // nw, nw, *t.shape[1:]) for t in (q, k, v))
      bias = bias + mask[:, None]
    out = layers.attention(q, k, v, (c // self.heads) ** -0.5, bias.astype(x.dtype))
    return self.proj(out.reshape(bw, self.heads, n, -1).transpose(0, 2, 1, 3).reshape(bw, n, c))


class SwinBlock(nnx.Module):
  """x + attn(norm1(x)) in (shifted) windows, then x + mlp(norm2(x)); x is (B, H, W, C)."""

  def __init__(self, dim: int, heads: int, window: int, shift: int, drop_path: float,
               *, kernels: Kernels, rngs: nnx.Rngs):
    self.window, self.shift = window, shift
    self.norm1 = layers.layer_norm(dim, LN_EPS, rngs, kernels)
    self.attn = WindowAttention(dim, heads, window, rngs=rngs)
    self.norm2 = layers.layer_norm(dim, LN_EPS, rngs, kernels)
    self.mlp = layers.Mlp(dim, 4 * dim, rngs=rngs)
    self.drop_path = layers.DropPath(drop_path, rngs=rngs)

  def _attn(self, x: jax.Array) -> jax.Array:
    _, h, w, _ = x.shape
    s, win = self.shift, self.window
    if s:
      x = jnp.roll(x, (-s, -s), axis=(1, 2))
    mask = shift_mask(h, w, win, s) if s else None
    x = window_reverse(self.attn(window_partition(x, win), mask), win, h, w)
    return jnp.roll(x, (s, s), axis=(1, 2)) if s else x

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = x + self.drop_path(self._attn(self.norm1(x)), train)
    return x + self.drop_path(self.mlp(self.norm2(x)), train)


class PatchMerging(nnx.Module):
  """2x2 neighbours concatenated in order (0,0),(1,0),(0,1),(1,1) -> LayerNorm(4C) -> Linear(4C, 2C)."""

  def __init__(self, dim: int, *, kernels: Kernels, rngs: nnx.Rngs):
    self.norm = layers.layer_norm(4 * dim, LN_EPS, rngs, kernels)
    self.reduction = nnx.Linear(4 * dim, 2 * dim, use_bias=False, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)
    return self.reduction(self.norm(x))


class SwinStage(nnx.Module):
  """Optional patch merging, then `depth` blocks alternating plain and shifted windows."""

  def __init__(self, dim: int, out_dim: int, depth: int, heads: int, window: int, resolution: int,
               rates: Sequence[float], *, kernels: Kernels, rngs: nnx.Rngs):
    self.downsample = PatchMerging(dim, kernels=kernels, rngs=rngs) if out_dim != dim else None
    if resolution <= window:  # timm: a window covering the whole map takes no shift.
      window = resolution
    shift = 0 if resolution <= window else window // 2
    self.blocks = nnx.List([
        SwinBlock(out_dim, heads, window, shift if j % 2 else 0, rates[j], kernels=kernels,
                  rngs=rngs)
        for j in range(depth)])

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.downsample is not None:
      x = self.downsample(x)
    for blk in self.blocks:
      x = blk(x, train)
    return x


class PatchEmbed(nnx.Module):
  """Conv patchify (`proj`) + optional LayerNorm (`norm`), NHWC out."""

  def __init__(self, patch: int, in_chans: int, dim: int, norm_eps: float | None,
               *, kernels: Kernels, rngs: nnx.Rngs):
    self.proj = layers.conv(in_chans, dim, patch, stride=patch, padding=0, kernels=kernels,
                            rngs=rngs)
    self.norm = layers.layer_norm(dim, norm_eps, rngs, kernels) if norm_eps else None

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.proj(x)
    return x if self.norm is None else self.norm(x)


class Head(nnx.Module):
  """timm ClassifierHead: global average pool over H, W, then `fc`."""

  def __init__(self, dim: int, num_classes: int, *, rngs: nnx.Rngs):
    self.fc = nnx.Linear(dim, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc(x.mean(axis=(1, 2)))


class SwinTransformer(nnx.Module):
  """Swin Transformer; feats are the NHWC stage outputs before the final norm.

  `kernels`: the forms the patch conv and every LayerNorm compute with (default: XLA's own ops).
  """

  def __init__(self, *, num_classes: int, img_size: int = 224, patch_size: int = 4,
               window_size: int = 7, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
               num_heads: Sequence[int] = (3, 6, 12, 24), drop_path_rate: float = 0.0,
               in_chans: int = 3, kernels: Kernels = Kernels(), rngs: nnx.Rngs):
    self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, LN_EPS, kernels=kernels,
                                  rngs=rngs)
    rates = layers.drop_path_rates(drop_path_rate, depths)
    stages, dim, res = [], embed_dim, img_size // patch_size
    for i, depth in enumerate(depths):
      out_dim = embed_dim * 2 ** i
      res = res // 2 if i else res
      first = sum(depths[:i])
      stages.append(SwinStage(dim, out_dim, depth, num_heads[i], window_size, res,
                              rates[first:first + depth], kernels=kernels, rngs=rngs))
      dim = out_dim
    self.layers = nnx.List(stages)
    self.norm = layers.layer_norm(dim, LN_EPS, rngs, kernels)
    self.head = Head(dim, num_classes, rngs=rngs)
    layers.trunc_normal_init(self, rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    x = self.patch_embed(x)
    feats = {}
    for i, stage in enumerate(self.layers):
      x = stage(x, train)
      feats[f'stage{i + 1}'] = x
    return self.head(self.norm(x)), feats

  def final_map(self, feats: dict[str, jax.Array]) -> jax.Array:
    """The final feature map (final norm of feats['stage4'], per position): ScaleKD's target."""
    return self.norm(feats['stage4'])

  def tail(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Last patch merging + last-stage blocks + final norm on a stage-3-shaped NHWC map (ScaleKD's
    TPP, `forward_specific_stage(x, 4)`); tail(feats['stage3']) == final_map(feats)."""
    return self.norm(self.layers[-1](x, train))


def _swin(**cfg):
  def build(*, num_classes: int, rngs: nnx.Rngs, **kw) -> SwinTransformer:
    return SwinTransformer(num_classes=num_classes, rngs=rngs, **{**cfg, **kw})
  return build


register('swin_t')(_swin(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)))
# ScaleKD's teachers (timm swin_{small,base,large}_patch4_window7_224; Swin-L is the 22k->1k one).
register('swin_s')(_swin(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)))
register('swin_b')(_swin(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)))
register('swin_l')(_swin(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)))
# Tiny variant (= swin_ref's shape); 224 input as the window/shift layout needs.
register('swin_atto')(_swin(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(2, 4, 8, 16)))
