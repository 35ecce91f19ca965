"""Vision Transformer in the timm layout: the paper's legacy "ViT-S" teacher and DeiT-S.

Names: `cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.i.{norm1,attn.{qkv,proj},norm2,mlp.{fc1,fc2}}`,
`norm`, `head`. `vit_s_legacy` is the old timm `vit_small_patch16_224` the paper used (embed 768, depth 8,
heads 8, mlp 3, no qkv bias, qk scale 768^-0.5, LayerNorm eps 1e-5); `deit_s` is DeiT-S (embed 384,
depth 12, heads 6, qkv bias, eps 1e-6).

feats: stage1..stage3 are the patch tokens after blocks depth/4, depth/2, 3*depth/4 (rounded up);
stage4 is the final-norm patch tokens, i.e. the paper's FD target. All reshaped row-major to NHWC maps,
class token dropped.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from lkd_jax.kernels import Kernels
from lkd_jax.models import layers
from lkd_jax.models.registry import register
from lkd_jax.models.swin import PatchEmbed


class Attention(nnx.Module):
  """Multi-head self-attention with a fused `qkv` Linear (rows ordered q|k|v, head, head_dim)."""

  def __init__(self, dim: int, heads: int, qkv_bias: bool, scale: float, *, rngs: nnx.Rngs):
    self.heads, self.scale = heads, scale
    self.qkv = nnx.Linear(dim, 3 * dim, use_bias=qkv_bias, rngs=rngs)
    self.proj = nnx.Linear(dim, dim, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, c = x.shape
    q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).transpose(2, 0, 3, 1, 4)
    out = layers.attention(q, k, v, self.scale)
    return self.proj(out.transpose(0, 2, 1, 3).reshape(b, n, c))


class ViTBlock(nnx.Module):
  """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

  def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool, scale: float,
               eps: float, drop_path: float, *, kernels: Kernels, rngs: nnx.Rngs):
    self.norm1 = layers.layer_norm(dim, eps, rngs, kernels)
    self.attn = Attention(dim, heads, qkv_bias, scale, rngs=rngs)
    self.norm2 = layers.layer_norm(dim, eps, rngs, kernels)
    self.mlp = layers.Mlp(dim, int(dim * mlp_ratio), rngs=rngs)
    self.drop_path = layers.DropPath(drop_path, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = x + self.drop_path(self.attn(self.norm1(x)), train)
    return x + self.drop_path(self.mlp(self.norm2(x)), train)


class VisionTransformer(nnx.Module):
  """ViT with a class token and learned position embedding; the head reads the class token.

  `img_size`: an int or (H, W). `kernels`: the forms the patch conv and every LayerNorm compute with
  (default: XLA's own ops).
  """

  def __init__(self, *, num_classes: int, img_size: int | tuple[int, int] = 224, patch_size: int = 16,
               embed_dim: int = 384, depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0,
               qkv_bias: bool = True, qk_scale: float | None = None, ln_eps: float = 1e-6,
               drop_path_rate: float = 0.0, in_chans: int = 3, kernels: Kernels = Kernels(),
               rngs: nnx.Rngs):
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    self.grid = (h // patch_size, w // patch_size)
    self.depth = depth
    # ScaleKD's TPP split (mmcls vision_transformer.py forward_specific_stage: blocks 8-11 of 12
    # and the final norm) as a fraction of the depth, at least one block.
    self.tail_start = depth - max(1, depth // 3)
    init = nnx.initializers.truncated_normal(0.02)
    self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, None, kernels=kernels, rngs=rngs)
    self.cls_token = nnx.Param(init(rngs.params(), (1, 1, embed_dim)))
    self.pos_embed = nnx.Param(init(rngs.params(), (1, 1 + self.grid[0] * self.grid[1], embed_dim)))
    scale = qk_scale or (embed_dim // num_heads) ** -0.5
    rates = layers.drop_path_rates(drop_path_rate, [depth])
    self.blocks = nnx.List([
        ViTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, scale, ln_eps, rates[i], kernels=kernels,
                 rngs=rngs)
        for i in range(depth)])
    self.norm = layers.layer_norm(embed_dim, ln_eps, rngs, kernels)
    self.head = nnx.Linear(embed_dim, num_classes, rngs=rngs)
    layers.trunc_normal_init(self, rngs)

  def tokens(self, x: jax.Array) -> tuple[jax.Array, tuple[int, int]]:
    """(class token + patch tokens + position embedding (B, 1 + h*w, C), the patch grid (h, w))."""
    x = self.patch_embed(x)
    b, h, w, c = x.shape
    cls = jnp.broadcast_to(self.cls_token[...], (b, 1, c)).astype(x.dtype)
    return jnp.concatenate([cls, x.reshape(b, h * w, c)], axis=1) + self.pos_embed[...], (h, w)

  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    x, grid = self.tokens(x)
    taps = [math.ceil(self.depth * k / 4) - 1 for k in (1, 2, 3)]  # block index of stage1..3.
    feats = {}
    for i, blk in enumerate(self.blocks):
      x = blk(x, train)
      feats.update({f'stage{k + 1}': _patch_map(x, grid) for k, t in enumerate(taps) if t == i})
    x = self.norm(x)
    feats['stage4'] = _patch_map(x, grid)
    return self.head(x[:, 0]), dict(sorted(feats.items()))

  def final_map(self, feats: dict[str, jax.Array]) -> jax.Array:
    """The final feature map (feats['stage4'] is already the final-norm patch map): ScaleKD's target."""
    return feats['stage4']

  def tail(self, x: jax.Array, train: bool = False, cls: jax.Array | None = None) -> jax.Array:
    """Blocks tail_start.. + final norm on an NHWC patch map (ScaleKD's TPP for ViT teachers).

    A projected student map has no class token, so by default the blocks attend over the patch
    tokens alone; `cls` (B, 1, C) prepends one (the teacher's own, to reproduce its forward).
    """
    b, h, w, c = x.shape
    x = x.reshape(b, h * w, c)
    if cls is not None:
      x = jnp.concatenate([cls.astype(x.dtype), x], axis=1)
    for blk in self.blocks[self.tail_start:]:
      x = blk(x, train)
    x = self.norm(x)
    return _patch_map(x if cls is None else x[:, 1:], (h, w), has_cls=False)


def _patch_map(tokens: jax.Array, grid: tuple[int, int], has_cls: bool = True) -> jax.Array:
  """Patch tokens (class token dropped if present) reshaped row-major to (B, h, w, C)."""
  b, _, c = tokens.shape
  return (tokens[:, 1:] if has_cls else tokens).reshape(b, *grid, c)


def _vit(**cfg):
  def build(*, num_classes: int, rngs: nnx.Rngs, **kw) -> VisionTransformer:
    return VisionTransformer(num_classes=num_classes, rngs=rngs, **{**cfg, **kw})
  return build


_LEGACY = dict(mlp_ratio=3.0, qkv_bias=False, ln_eps=1e-5)
register('vit_s_legacy')(_vit(embed_dim=768, depth=8, num_heads=8, qk_scale=768 ** -0.5, **_LEGACY))
register('deit_s')(_vit(embed_dim=384, depth=12, num_heads=6))
# ViT-B / ViT-L in the timm layout (vit_{base,large}_patch16_224; DeiT-B has the same keys). timm's
# ViT-B/L use LayerNorm eps 1e-6, like DeiT.
register('vit_b')(_vit(embed_dim=768, depth=12, num_heads=12))
register('vit_l')(_vit(embed_dim=1024, depth=24, num_heads=16))
# Tiny variants (= vit_legacy_ref / deit_small_ref shapes), 64x64 input.
register('vit_legacy_atto')(_vit(img_size=64, embed_dim=64, depth=2, num_heads=4, qk_scale=0.125,
                                 **_LEGACY))
register('deit_atto')(_vit(img_size=64, embed_dim=48, depth=2, num_heads=3))
