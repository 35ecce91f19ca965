"""Performance forms of the models' ops, and `resolve`, the one place that picks them.

A model computes with the forms named by the `Kernels` it is built with (`models.create(name,
num_classes=..., kernels=...)`), which its layers hold; no module-level state decides what runs.
`Kernels()` is XLA's own ops everywhere. `resolve(config, platform)` turns a config's
`depthwise_impl`, `conv_impl` and `layer_norm_impl` ('auto' or a form's name) into the measured
choice for `platform`, and is the only place that reads the host (its vector ISA).

  depthwise.py    depthwise conv forms (shift sums, channel-blocked shift sums, FFT, banded matmul)
                  and `pick_auto`, the per-shape rule a depthwise 'auto' applies inside the layer
  conv.py         dense convs as matmuls (1x1 and patchify convs; other kernels' gradient)
  layer_norm.py   LayerNorm statistics as mat-vec products
  pool.py         max pool with a scatter-free backward (ResNet's stem)
  xla_options.py  XLA:CPU compiler options for every jitted step
  host_malloc.py  glibc malloc settings for XLA:CPU, applied before JAX starts

This module imports no JAX: lkd_jax.main applies host_malloc before JAX starts its threads.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from lkd_jax import environment
from lkd_jax.errors import SetupError

DEPTHWISE_FORMS = ('xla', 'shift', 'shift_cb', 'fft', 'toeplitz')
CONV_FORMS = ('xla', 'matmul', 'matmul_reshape')
LAYER_NORM_FORMS = ('reduce', 'dot/reduce')
KERNEL_GRADS = ('tree', 'batch_tree', 'fft')


@dataclasses.dataclass(frozen=True)
class DepthwiseOptions:
  """How the depthwise forms run; the defaults are the measured ones (benchmarks vary them).

  crop: drop the taps that only ever see the padding (same output, fewer MACs).
  kernel_grad: the shift forms' kernel gradient, 'auto' (per shape: depthwise.kernel_grad_form) or
    one of KERNEL_GRADS.
  materialize: the shift forms write their sums and gradients once (depthwise.fusion_barrier);
    `resolve` sets it on CPU only, where it was measured (elsewhere a conditional's predicate is a
    device-to-host sync).
  bands: `shift_cb` computes a long kernel's output in this many bands of rows.
  """
  crop: bool = True
  kernel_grad: str = 'auto'
  materialize: bool = True
  bands: int = 4

  def __post_init__(self):
    if self.kernel_grad not in ('auto',) + KERNEL_GRADS:
      raise ValueError(f'Unknown kernel_grad {self.kernel_grad!r}; choose one of '
                       f'{("auto",) + KERNEL_GRADS}.')
    if self.bands < 1:
      raise ValueError(f'bands must be positive, got {self.bands}.')


@dataclasses.dataclass(frozen=True)
class Kernels:
  """The forms a model computes with (held by its layers); the default is XLA's own ops.

  depthwise: one of DEPTHWISE_FORMS; an 'inference/training' pair of them (the first where no
    gradient flows, a frozen teacher; the second, forward and backward, where one does); or 'auto':
    `depthwise.pick_auto` for each conv's shapes on `platform`.
  conv: dense convs, one of CONV_FORMS (conv.py).
  layer_norm: LayerNorm statistics, one of LAYER_NORM_FORMS (layer_norm.py).
  platform: where 'auto' picks ('cpu', 'gpu', 'tpu'); depthwise_options: how the depthwise forms run.
  """
  depthwise: str = 'xla'
  conv: str = 'xla'
  layer_norm: str = 'reduce'
  platform: str | None = None
  depthwise_options: DepthwiseOptions = DepthwiseOptions()

  def __post_init__(self):
    _check('depthwise', self.depthwise, DEPTHWISE_FORMS, pairs=True, auto=True)
    _check('conv', self.conv, CONV_FORMS)
    _check('layer_norm', self.layer_norm, LAYER_NORM_FORMS)
    if self.depthwise == 'auto' and not self.platform:
      raise ValueError("depthwise 'auto' picks per platform: give Kernels a platform "
                       "(kernels.resolve does).")


def _check(what: str, name: str, forms: tuple[str, ...], pairs: bool = False,
           auto: bool = False) -> None:
  parts = name.split('/') if pairs and name.count('/') == 1 else [name]
  if not (all(p in forms for p in parts) or (auto and name == 'auto')):
    pair = " or an 'inference/training' pair of them" if pairs else ''
    raise SetupError(f'Unknown {what} impl {name!r}; choose one of '
                     f'{("auto",) + forms}{pair}.')


def _auto_conv(platform: str, isa: str) -> str:
  """Dense convs' 'auto' (measured, conv.py): XLA's conv off CPU; on CPU the matmul forms, except
  that on AVX-512 hosts kxk convs that are not patchify stay XLA's."""
  if platform != 'cpu':
    return 'xla'
  return 'matmul_reshape' if isa == 'avx512f' else 'matmul'


def resolve(config: Mapping[str, Any], platform: str, isa: str | None = None) -> Kernels:
  """The Kernels for `config`'s depthwise_impl, conv_impl and layer_norm_impl (each 'auto' or a
  form's name; a missing key means 'auto') on `platform` ('cpu', 'gpu', 'tpu'); `isa` is the host's
  widest vector ISA (default: read from the host where it matters, on CPU)."""
  names = {key: config.get(f'{key}_impl', 'auto') or 'auto'
           for key in ('depthwise', 'conv', 'layer_norm')}
  _check('depthwise', names['depthwise'], DEPTHWISE_FORMS, pairs=True, auto=True)
  _check('conv', names['conv'], CONV_FORMS, auto=True)
  _check('layer_norm', names['layer_norm'], LAYER_NORM_FORMS, auto=True)
  cpu = platform == 'cpu'
  if names['conv'] == 'auto':
    names['conv'] = _auto_conv(platform, isa or (environment.cpu_isa() if cpu else ''))
  if names['layer_norm'] == 'auto':
    names['layer_norm'] = 'dot/reduce' if cpu else 'reduce'
  return Kernels(**names, platform=platform, depthwise_options=DepthwiseOptions(materialize=cpu))
