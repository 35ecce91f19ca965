"""Dense (non-grouped) 2-D convolution for `nnx.Conv`, chosen per platform and shape.

Every dense conv in the zoo is built by `layers.conv`, which hands `nnx.Conv` a
`ConvGeneralDilated(form)` (same parameters, same checkpoints; the form is the model's
`kernels.conv`). Forms:

- `xla`: `lax.conv_general_dilated`, everywhere. XLA:CPU runs the kernel gradient of a 1x1 conv
  as a convolution several times slower than the matmul it is, which made the ResNet-50 train step
  2.2-2.3x slower than PyTorch's on CPU (benchmarks/kd_step.py --conv-impl xla).
- `matmul`: 1x1 convs (any stride) and patchify convs (kernel == stride, no padding: the
  ConvNeXt/SLaK/Swin stems and downsamplers) become one 2-D matmul over (strided or space-to-depth
  reshaped) pixels, so forward, input gradient and kernel gradient are all plain matmuls (the
  kernel gradient transposes its input explicitly: `_weight_grad`). Other
  kernels keep XLA's convolution forward and input gradient, and take the kernel gradient as kh
  matmuls, one per kernel row over its kw shifted slices stacked on channels (im2col by rows; custom
  VJP). Measured fwd+bwd speed-ups over `xla` (benchmarks/dense_conv.py, 2-core CPU, batch 8): on
  an AVX2 VM with XLA's convs on YNNPACK, 1x1 2.4-5.8x, patchify 2.7-2.9x, ResNet-50's 7x7/2 stem
  2.4x, its 3x3 convs 1.0-1.2x; on an AVX-512 VM with them on Eigen, 1x1 0.8-1.5x, patchify 1.2-1.6x.
- `matmul_reshape`: `matmul`'s 1x1 and patchify forms (a reshape and one matmul); other kernels
  XLA's conv. On AVX-512 CPUs XLA's own kernel gradient beats the rows of matmuls (batch 8,
  fwd+bwd, XLA's convs on Eigen as kernels/xla_options.py sets them: ResNet-50's 3x3 convs 30-40 vs
  33-48 ms, a tie at 7x7, its stem 38 vs 58 ms; the train step 1.61 vs 1.72 s; benchmarks/README.md),
  while on an AVX2 VM, with XLA's convs then on YNNPACK, they were 1.1-1.5x (3x3) and 3.2x (stem)
  slower (benchmarks/results/dense_conv_cpu.json).

`auto` (kernels.resolve) is `matmul` on CPU, `matmul_reshape` on AVX-512 CPUs, `xla` on GPU/TPU
(whose convolution libraries are matmul-based already).

All forms give the convolution's output and gradients up to float rounding (tests/models/test_conv.py).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _weight_grad(x2: jax.Array, g2: jax.Array, precision) -> jax.Array:
  """x2^T @ g2 over pixel rows, with the transpose of `x2` explicit.

  Left to itself, XLA:CPU contracts the two (pixels, channels) operands by writing the output
  gradient transposed from inside its producer's fused loop (e.g. BatchNorm's backward), which is
  slow; with the input transposed as a plain copy, benchmarks/dense_conv.py's 1x1 convs went from
  2.0-4.9x to 2.4-5.8x faster than XLA's conv (fwd+bwd, batch 8, benchmarks/README.md).
  """
  return jnp.dot(x2.T, g2, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(x2: jax.Array, w2: jax.Array, precision) -> jax.Array:
  """(pixels, Cin) @ (Cin, Cout), whose kernel gradient is `_weight_grad`."""
  return jnp.dot(x2, w2, precision=precision)


def _matmul_fwd(x2, w2, precision):
  return _matmul(x2, w2, precision), (x2, w2)


def _matmul_bwd(precision, res, g):
  x2, w2 = res
  return jnp.dot(g, w2.T, precision=precision), _weight_grad(x2, g, precision).astype(w2.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _pointwise(x: jax.Array, w: jax.Array, strides: tuple[int, int], precision) -> jax.Array:
  """1x1 conv, no padding: strided pixel subsample @ (Cin, Cout)."""
  sh, sw = strides
  x = x[:, ::sh, ::sw]
  y = _matmul(x.reshape(-1, x.shape[-1]), w[0, 0], precision)
  return y.reshape(x.shape[:-1] + (w.shape[-1],))


def _patchify(x: jax.Array, w: jax.Array, precision) -> jax.Array:
  """kxk conv with stride k, no padding: space-to-depth reshape @ (k*k*Cin, Cout)."""
  kh, kw, ci, co = w.shape
  n, h, wd, _ = x.shape
  ho, wo = h // kh, wd // kw  # VALID: a remainder row/column is never read.
  x = x[:, :ho * kh, :wo * kw].reshape(n, ho, kh, wo, kw, ci).transpose(0, 1, 3, 2, 4, 5)
  y = _matmul(x.reshape(n * ho * wo, kh * kw * ci), w.reshape(kh * kw * ci, co), precision)
  return y.reshape(n, ho, wo, co)


def _xla_conv(x, w, strides, pads, precision):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC, precision=precision)


def _kernel_grad_rows(x, g, kshape, strides, pads, precision):
  """d(conv)/d(kernel) = sum over pixels of input patch x output grad, one kernel row at a time."""
  kh, kw, ci, co = kshape
  (sh, sw), (_, ho, wo, _) = strides, g.shape
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  g2 = g.reshape(-1, co)
  rows = []
  for a in range(kh):
    cols = jnp.concatenate([xp[:, a:a + sh * (ho - 1) + 1:sh, b:b + sw * (wo - 1) + 1:sw]
                            for b in range(kw)], axis=-1)  # (n, ho, wo, kw * ci)
    rows.append(_weight_grad(cols.reshape(-1, kw * ci), g2, precision).reshape(kw, ci, co))
  return jnp.stack(rows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_im2col_grad(x, w, strides, pads, precision):
  return _xla_conv(x, w, strides, pads, precision)


def _im2col_grad_fwd(x, w, strides, pads, precision):
  return _xla_conv(x, w, strides, pads, precision), (x, w)


def _im2col_grad_bwd(strides, pads, precision, res, g):
  x, w = res
  _, vjp_x = jax.vjp(lambda x: _xla_conv(x, w, strides, pads, precision), x)
  return vjp_x(g)[0], _kernel_grad_rows(x, g, w.shape, strides, pads, precision).astype(w.dtype)


_conv_im2col_grad.defvjp(_im2col_grad_fwd, _im2col_grad_bwd)


def _as_pairs(padding: Any) -> tuple[tuple[int, int], ...] | None:
  """Explicit non-negative (lo, hi) pads, or None for 'SAME'/'VALID' strings and negative pads."""
  if isinstance(padding, str):
    return None
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return pads if all(lo >= 0 and hi >= 0 for lo, hi in pads) else None


def _is_nhwc(dimension_numbers: Any, lhs_ndim: int) -> bool:
  if lhs_ndim != 4:
    return False
  want = lax.conv_dimension_numbers((1,) * 4, (1,) * 4, _NHWC)
  got = lax.conv_dimension_numbers((1,) * 4, (1,) * 4, dimension_numbers or _NHWC)
  return got == want


def conv_form(x_shape: Sequence[int], w_shape: Sequence[int], strides: Sequence[int],
              padding: Any, impl: str) -> str:
  """Which form a conv of these shapes takes under `impl` (one of kernels.CONV_FORMS):
  'pointwise', 'patchify', 'im2col_grad' or 'xla'."""
  if impl == 'xla':
    return 'xla'
  kh, kw = w_shape[0], w_shape[1]
  pads = _as_pairs(padding)
  if pads is None:
    return 'xla'
  no_pad = all(p == (0, 0) for p in pads)
  if (kh, kw) == (1, 1) and no_pad:
    return 'pointwise'
  if (kh, kw) == tuple(strides) and no_pad:
    return 'patchify'
  return 'xla' if impl == 'matmul_reshape' else 'im2col_grad'


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                         feature_group_count: int = 1, precision: Any = None,
                         impl: str = 'xla', **kwargs) -> jax.Array:
  """Drop-in for `lax.conv_general_dilated` (as `nnx.Conv` calls it) computing in form `impl`."""
  plain = (feature_group_count == 1 and not any(kwargs.values())  # out_sharding, preferred type
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and _is_nhwc(dimension_numbers, lhs.ndim))
  form = conv_form(lhs.shape, rhs.shape, tuple(window_strides), padding, impl) if plain else 'xla'
  if form == 'pointwise':
    return _pointwise(lhs, rhs, tuple(window_strides), precision)
  if form == 'patchify':
    return _patchify(lhs, rhs, precision)
  if form == 'im2col_grad':
    return _conv_im2col_grad(lhs, rhs, tuple(window_strides), _as_pairs(padding), precision)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                  dimension_numbers, feature_group_count, precision=precision,
                                  **kwargs)


@dataclasses.dataclass(frozen=True)
class ConvGeneralDilated:
  """`conv_general_dilated` in one form, for `nnx.Conv(conv_general_dilated=...)`; compared by value,
  so two models built with the same Kernels have equal graph definitions."""
  form: str = 'xla'

  def __call__(self, *args, **kwargs) -> jax.Array:
    return conv_general_dilated(*args, impl=self.form, **kwargs)
