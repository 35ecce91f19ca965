"""SLaK (Liu et al., ICLR 2023) and the paper's BatchNorm ConvNeXt student, mirroring VITA-Group/SLaK models/SLaK.py.

Module names equal the PyTorch ones (`downsample_layers.i.j`, `stages.i.j.large_kernel.LoRA1.conv`, ...)
so a state_dict converts by rule. Each large kernel K with small edge N is, with `decom=True`,
BN(dw_KxN(x)) + BN(dw_NxK(x)) + BN(dw_NxN(x)); with `decom=False` it is BN(dw_KxK(x)) (+ BN(dw_NxN(x)) if N < K).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lkd_jax.kernels import Kernels
from lkd_jax.models import layers
from lkd_jax.models.registry import register

LN_EPS = 1e-6
# 'branches': the reference's parallel conv+BN branches (trainable); 'merged': one BN-folded KxK kernel + bias
# per unit; 'merged_decom': a decomposed unit's BN-folded KxN and NxK kernels, the NxN branch folded into the
# KxN one, + one bias (KxK when not decomposed). Both eval only (a frozen teacher); same eval output within
# float rounding.
INFERENCE_FORMS = ('branches', 'merged', 'merged_decom')


class ConvBN(nnx.Module):
  """Bias-free depthwise conv followed by its own BatchNorm (`conv`, `bn` as in the reference)."""

  def __init__(self, dim: int, kernel_size: tuple[int, int], *, kernels: Kernels, rngs: nnx.Rngs):
    self.conv = layers.DepthwiseConv(dim, kernel_size, kernels=kernels, rngs=rngs)
    self.bn = layers.BatchNorm(dim)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return self.bn(self.conv(x), train)

  def fused(self) -> tuple[jax.Array, jax.Array]:
    """Eval-mode kernel (kh, kw, C) and bias with the BatchNorm folded in."""
    bn = self.bn
    inv = bn.scale[...] * jax.lax.rsqrt(bn.var[...] + bn.eps)
    return self.conv.kernel[...][:, :, 0, :] * inv, bn.bias[...] - bn.mean[...] * inv


class ReparamLargeKernelConv(nnx.Module):
  """SLaK's large-kernel unit (reference `ReparamLargeKernelConv`)."""

  def __init__(self, dim: int, kernel: int, small: int, decom: bool, *, kernels: Kernels,
               rngs: nnx.Rngs):
    self.kernel, self.small, self.decom = kernel, small, decom
    if decom:
      self.LoRA1 = ConvBN(dim, (kernel, small), kernels=kernels, rngs=rngs)
      self.LoRA2 = ConvBN(dim, (small, kernel), kernels=kernels, rngs=rngs)
    else:
      self.lkb_origin = ConvBN(dim, (kernel, kernel), kernels=kernels, rngs=rngs)
    self.small_conv = (ConvBN(dim, (small, small), kernels=kernels, rngs=rngs) if small < kernel
                       else None)

  def branches(self) -> list[ConvBN]:
    """The parallel conv+BN branches whose outputs are summed."""
    out = [self.LoRA1, self.LoRA2] if self.decom else [self.lkb_origin]
    return out + ([self.small_conv] if self.small_conv is not None else [])

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return sum(b(x, train) for b in self.branches())

  def merged_kernels(self, decom: bool) -> tuple[list[jax.Array], jax.Array]:
    """Eval-mode kernels (kh, kw, C) and one bias equal to the sum of the BN-fused branches.

    decom=False: one KxK kernel. decom=True (decomposed units): the KxN and NxK kernels, each other
    branch (the NxN one) zero-padded, centre-aligned, into the first kernel that contains it.
    """
    fused = [b.fused() for b in self.branches()]
    if not (decom and self.decom):
      size = max(max(k.shape[:2]) for k, _ in fused)
      fused = [(_pad_to(k, (size, size)), c) for k, c in fused]
    kernels: list[jax.Array] = []
    for k, _ in fused:
      into = next((i for i, t in enumerate(kernels) if all(a >= b for a, b in zip(t.shape, k.shape))),
                  None)
      if into is None:
        kernels.append(k)
      else:
        kernels[into] = kernels[into] + _pad_to(k, kernels[into].shape[:2])
    return kernels, sum(c for _, c in fused)


def _pad_to(kernel: jax.Array, size: tuple[int, int]) -> jax.Array:
  """`kernel` (kh, kw, C) zero-padded on both sides of each axis, centre-aligned, to `size`."""
  ph, pw = (size[0] - kernel.shape[0]) // 2, (size[1] - kernel.shape[1]) // 2
  return jnp.pad(kernel, ((ph, ph), (pw, pw), (0, 0)))


class MergedLargeKernel(nnx.Module):
  """Inference form of a large-kernel unit: one KxK depthwise kernel + bias (`lkb_reparam`, RepLKNet's name)."""

  def __init__(self, dim: int, kernel: int, *, kernels: Kernels, rngs: nnx.Rngs):
    self.lkb_reparam = layers.DepthwiseConv(dim, (kernel, kernel), use_bias=True, kernels=kernels,
                                            rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    del train  # Eval-only form: the BatchNorms are folded in.
    return self.lkb_reparam(x)

  def convs(self) -> list[layers.DepthwiseConv]:
    """Its convs, in `ReparamLargeKernelConv.merged_kernels` order (the first holds the bias)."""
    return [self.lkb_reparam]


class MergedDecomposedKernel(nnx.Module):
  """Inference form of a decomposed unit: BN-folded KxN (+ the NxN branch, + bias) and NxK kernels.

  Two rectangular convs instead of three branches and their BatchNorms; far fewer taps than the
  KxK `MergedLargeKernel` (51x5 + 5x51 vs 51x51), so the fast rectangular forms still apply.
  """

  def __init__(self, dim: int, kernel: int, small: int, *, kernels: Kernels, rngs: nnx.Rngs):
    self.LoRA1 = layers.DepthwiseConv(dim, (kernel, small), use_bias=True, kernels=kernels,
                                      rngs=rngs)
    self.LoRA2 = layers.DepthwiseConv(dim, (small, kernel), kernels=kernels, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    del train  # Eval-only form: the BatchNorms are folded in.
    return self.LoRA1(x) + self.LoRA2(x)

  def convs(self) -> list[layers.DepthwiseConv]:
    """Its convs, in `ReparamLargeKernelConv.merged_kernels` order (the first holds the bias)."""
    return [self.LoRA1, self.LoRA2]


def merge_large_kernels(model: nnx.Module, form: str = 'merged') -> nnx.Module:
  """Replaces, in place, every `ReparamLargeKernelConv` by its eval-mode `form` (one of
  INFERENCE_FORMS; 'branches' keeps the model as is), computing with the unit's kernels; returns
  `model`."""
  if form not in INFERENCE_FORMS:
    raise ValueError(f'inference_form must be one of {INFERENCE_FORMS}, got {form!r}.')
  if form == 'branches':
    return model
  for _, m in list(nnx.iter_modules(model)):
    if not (isinstance(m, Block) and isinstance(m.large_kernel, ReparamLargeKernelConv)):
      continue
    unit = m.large_kernel
    weights, bias = unit.merged_kernels(decom=form == 'merged_decom')
    merged = _eval_unit(weights[0].shape[-1], unit.kernel, unit.small, len(weights) == 2,
                        unit.branches()[0].conv.kernels)
    for conv, k in zip(merged.convs(), weights, strict=True):
      conv.kernel[...] = k[:, :, None, :]
    merged.convs()[0].bias[...] = bias
    m.large_kernel = merged
  return model


def _eval_unit(dim: int, kernel: int, small: int, decom: bool, kernels: Kernels,
               rngs: nnx.Rngs | None = None) -> nnx.Module:
  """An eval-only large-kernel unit: KxN and NxK kernels if `decom` (and N < K), else one KxK."""
  rngs = rngs or nnx.Rngs(0)
  if decom and small < kernel:
    return MergedDecomposedKernel(dim, kernel, small, kernels=kernels, rngs=rngs)
  return MergedLargeKernel(dim, kernel, kernels=kernels, rngs=rngs)


class Block(nnx.Module):
  """x + drop_path(gamma * pwconv2(GELU(pwconv1(LN(large_kernel(x))))))."""

  def __init__(self, dim: int, kernel: int, small: int, decom: bool, drop_path: float,
               layer_scale: float, *, form: str = 'branches', kernels: Kernels, rngs: nnx.Rngs):
    self.large_kernel = (
        ReparamLargeKernelConv(dim, kernel, small, decom, kernels=kernels, rngs=rngs)
        if form == 'branches'
        else _eval_unit(dim, kernel, small, decom and form == 'merged_decom', kernels, rngs))
    self.norm = layers.layer_norm(dim, LN_EPS, rngs, kernels)
    self.pwconv1 = nnx.Linear(dim, 4 * dim, rngs=rngs)
    self.pwconv2 = nnx.Linear(4 * dim, dim, rngs=rngs)
    self.gamma = nnx.Param(jnp.full((dim,), layer_scale)) if layer_scale > 0 else None
    self.drop_path = layers.DropPath(drop_path, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.pwconv2(layers.gelu(self.pwconv1(self.norm(self.large_kernel(x, train)))))
    if self.gamma is not None:
      y = y * self.gamma[...]
    return x + self.drop_path(y, train)


class SLaK(nnx.Module):
  """ConvNeXt macro structure with SLaK large-kernel units; returns (logits, {'stage1'..'stage4'}).

  `kernels`: the forms every conv and LayerNorm computes with (default: XLA's own ops).
  """

  def __init__(self, *, num_classes: int, depths: Sequence[int], dims: Sequence[int],
               kernel_size: Sequence[int], width_factor: float = 1.0, decom: bool = True,
               drop_path_rate: float = 0.0, layer_scale_init_value: float = 1e-6,
               head_init_scale: float = 1.0, in_chans: int = 3, inference_form: str = 'branches',
               kernels: Kernels = Kernels(), rngs: nnx.Rngs):
    if inference_form not in INFERENCE_FORMS:
      raise ValueError(f'inference_form must be one of {INFERENCE_FORMS}, got {inference_form!r}.')
    dims = [int(d * width_factor) for d in dims]
    self.kernel_size, self.decom = tuple(kernel_size), decom
    self.inference_form, self.kernels = inference_form, kernels
    stem = nnx.List([layers.conv(in_chans, dims[0], 4, stride=4, padding=0, kernels=kernels, rngs=rngs),
                     layers.layer_norm(dims[0], LN_EPS, rngs, kernels)])
    downs = [nnx.List([layers.layer_norm(dims[i], LN_EPS, rngs, kernels),
                       layers.conv(dims[i], dims[i + 1], 2, stride=2, padding=0, kernels=kernels,
                                   rngs=rngs)])
             for i in range(3)]
    self.downsample_layers = nnx.List([stem] + downs)
    rates = iter(layers.drop_path_rates(drop_path_rate, depths))
    self.stages = nnx.List([
        nnx.List([self.make_block(i, dims[i], next(rates), layer_scale_init_value, rngs)
                  for _ in range(depths[i])])
        for i in range(4)])
    self.norm = layers.layer_norm(dims[-1], LN_EPS, rngs, kernels)
    self.head = nnx.Linear(dims[-1], num_classes, rngs=rngs)
    _trunc_normal_init(self, rngs)
    if head_init_scale != 1.0:
      self.head.kernel = nnx.Param(self.head.kernel[...] * head_init_scale)
      self.head.bias = nnx.Param(self.head.bias[...] * head_init_scale)

  def make_block(self, stage: int, dim: int, drop_path: float, layer_scale: float,
                 rngs: nnx.Rngs) -> nnx.Module:
    """One block of `stage` (subclasses swap the block type)."""
    return Block(dim, self.kernel_size[stage], self.kernel_size[-1], self.decom, drop_path,
                 layer_scale, form=self.inference_form, kernels=self.kernels, rngs=rngs)

  def _stage(self, i: int, x: jax.Array, train: bool) -> jax.Array:
    for layer in self.downsample_layers[i]:  # stem: conv, LN; downsampling: LN, conv.
      x = layer(x)
    for blk in self.stages[i]:
      x = blk(x, train)
    return x

  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    feats = {}
    for i in range(4):
      x = self._stage(i, x, train)
      feats[f'stage{i + 1}'] = x
    logits = self.head(self.norm(x.mean(axis=(1, 2))))
    return logits, feats

  def final_map(self, feats: dict[str, jax.Array]) -> jax.Array:
    """The final feature map: the final LayerNorm applied per position to feats['stage4'] (the
    classifier pools first; ScaleKD's target is a map, as mmcls ConvNeXt's gap_before_final_norm=False)."""
    return self.norm(feats['stage4'])

  def tail(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Last downsampling + last-stage blocks + final norm per position on a stage-3-shaped NHWC map
    (ScaleKD's TPP); tail(feats['stage3']) == final_map(feats). The norm is kept, unlike mmcls
    ConvNeXt's `forward_specific_stage`, so that the TPP output and the target are the same function."""
    return self.norm(self._stage(3, x, train))


def _trunc_normal_init(model: nnx.Module, rngs: nnx.Rngs) -> None:
  layers.trunc_normal_init(model, rngs)


_SLAK_KERNELS = (51, 49, 47, 13, 5)


def _slak(depths, dims, kernel_size=_SLAK_KERNELS, width_factor=1.3, decom=True):
  def build(*, num_classes: int, rngs: nnx.Rngs, **kw) -> SLaK:
    cfg = dict(depths=depths, dims=dims, kernel_size=kernel_size, width_factor=width_factor,
               decom=decom)
    cfg.update(kw)
    return SLaK(num_classes=num_classes, rngs=rngs, **cfg)
  return build


register('slak_t')(_slak((3, 3, 9, 3), (96, 192, 384, 768)))
register('slak_s')(_slak((3, 3, 27, 3), (96, 192, 384, 768)))
register('slak_b')(_slak((3, 3, 27, 3), (128, 256, 512, 1024)))
# The paper's ConvNeXt students: SLaK code with kernel 7, no decomposition, width 1.0 (BN after the 7x7 dw conv).
register('convnext_t_bn')(_slak((3, 3, 9, 3), (96, 192, 384, 768), (7, 7, 7, 7, 100), 1.0, False))
register('convnext_s_bn')(_slak((3, 3, 27, 3), (96, 192, 384, 768), (7, 7, 7, 7, 100), 1.0, False))
# Tiny variants for tests and CPU demos (timm's 'atto' naming); kernels sized for 64-128 px inputs.
register('slak_atto')(_slak((1, 1, 2, 1), (16, 32, 64, 128), (15, 13, 11, 7, 3), 1.3, True))
register('convnext_bn_atto')(_slak((1, 1, 2, 1), (16, 32, 64, 128), (7, 7, 7, 7, 100), 1.0, False))
