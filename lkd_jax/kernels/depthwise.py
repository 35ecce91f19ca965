"""Depthwise convolution forms, chosen per platform and shape (DESIGN §5).

All functions compute the depthwise cross-correlation of an NHWC `x` with a (kh, kw, C) kernel,
stride 1, zero padding (kh//2, kw//2) per axis (the references' padding), and give the same output
and the same gradients up to float rounding:

- `xla`: `lax.conv_general_dilated(feature_group_count=C)`. Fast on GPU/TPU forward, but 50-120x
  slower than PyTorch on XLA:CPU for large kernels.
- `shift`: sum of kh*kw shifted, channel-scaled slices (unrolled), with a custom VJP: the input
  gradient in the same form; the kernel gradient per tap a halving-tree sum of its products (on
  small maps and batches, after adding them image by image), or for 49+ taps on maps over 28x28 one
  FFT correlation summed over the batch in the spectrum. Its output
  is written once (`fusion_barrier`), and sums of more than 49 taps run in chunks. Best on CPU for
  5x5 kernels, and for larger ones on 7x7 maps.
- `shift_cb`: the same sums and VJP on a channel-blocked copy of the input, (C/8 * B, H, W, 8), so
  that a tap's rows lie close in memory; each loop keeps 4 independent sums. Best on CPU for 7x7
  kernels both ways, for the Kx5 / 5xK forward on 14x14-56x56 maps and the merged-kernel one on
  14x14, and for Kx5 / 5xK forward+backward on 56x56 maps and at batch 1-2 on 14x14.
- `fft`: rfft2 product over a grid of H+kh-1 x W+kw-1 (rounded up to a fast size). Best on CPU for
  large square (merged 51x51) kernels.
- `toeplitz`: for a rectangular kernel, the long axis becomes a per-channel banded (H x H) matrix
  applied as a batched matmul, summed over the short-axis taps. Best on CPU for Kx5 / 5xK
  forward+backward on 28x28 maps and on 14x14 from batch 4; the matmul form for tensor cores / the
  MXU.

`depthwise_conv(x, kernel, kernels)` runs the form `kernels.depthwise` names (kernels.Kernels):
one form, an 'inference/training' pair (a frozen teacher's forward takes the first, a
differentiated call the second's forward and backward: `_split`), or 'auto', which `pick_auto`
resolves for each conv's shapes on `kernels.platform`. `kernels.depthwise_options` tunes the forms.

Every form first crops taps that can only ever see padding (unless `depthwise_options.crop` is
off): along an axis of length H, a kernel offset d = i - k//2 with |d| > H-1 never overlaps the map
(same output, fewer MACs; e.g. SLaK-T stage 3: 47 -> 27 on a 14x14 map).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from lkd_jax.kernels import DepthwiseOptions, Kernels

# A form: (x, kernel, pad_h, pad_w, options) -> y, the kernel already cropped (`crop_kernel`).
Form = Callable[[jax.Array, jax.Array, tuple[int, int], tuple[int, int], DepthwiseOptions], jax.Array]


def _crop_range(k: int, n: int) -> tuple[int, int]:
  """Taps [lo, hi) of a length-k kernel (centre k//2) that can touch a length-n map."""
  c = k // 2
  lo = max(0, c - (n - 1))
  hi = min(k, c + (n - 1) + 1)
  return lo, hi


def crop_kernel(kernel: jax.Array, h: int, w: int) -> tuple[jax.Array, tuple[int, int], tuple[int, int]]:
  """Drops taps that only see padding; returns the kernel and its (before, after) pads per axis.

  The kept taps keep their offsets, so the padding is no longer necessarily symmetric for
  even-sized kernels; for odd kernels (all of SLaK's) it stays (k'//2, k'//2).
  """
  kh, kw, _ = kernel.shape
  lo_h, hi_h = _crop_range(kh, h)
  lo_w, hi_w = _crop_range(kw, w)
  kernel = kernel[lo_h:hi_h, lo_w:hi_w]
  pad_h = (kh // 2 - lo_h, (hi_h - lo_h) - 1 - (kh // 2 - lo_h))
  pad_w = (kw // 2 - lo_w, (hi_w - lo_w) - 1 - (kw // 2 - lo_w))
  return kernel, pad_h, pad_w


def _xla(x, kernel, pad_h, pad_w, opts=None):
  c = kernel.shape[-1]
  return jax.lax.conv_general_dilated(
      x, kernel[:, :, None, :], (1, 1), (pad_h, pad_w),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c)


def fusion_barrier(y: jax.Array) -> jax.Array:
  """`y`, written to a buffer once instead of recomputed inside each consumer's fused loop.

  XLA:CPU fuses a kh*kw-tap sum into every elementwise consumer (ConvNeXt's LayerNorm statistics
  and normalization: 3 copies per block; the 25 taps of a 5x5 kernel gradient: 25). It removes
  `optimization_barrier` before fusion and folds away every identity tried (a loop of one trip, a
  copy, a dynamic_update_slice, a nested non-inlined call); a conditional is the one op it does not
  fuse across. So this is a `lax.cond` whose predicate reads `y` (XLA cannot evaluate it while
  compiling) and holds for every value, NaN included; its branches differ so that XLA does not
  merge them; it returns `y`. With `optimization_barrier` here instead, `auto`'s CPU forms ran
  1.7-20x slower (benchmarks/depthwise.py's functions, 2-core CPU, interleaved: SLaK-T's stage-1
  unit, 51x5 + 5x51 + 5x5 on 56x56x124 at batch 1, forward 248 vs 12.8 ms, forward+backward 677 vs
  63 ms; 13x13 on 7x7x998 at batch 8, forward 28 vs 6.0 ms, forward+backward 49 vs 28 ms).
  """
  a = y.reshape(-1)[0]
  return jax.lax.cond((a == a) | (a != a), lambda v: v, lambda v: v * 1 + 0, y)


def _written(y: jax.Array, opts: DepthwiseOptions) -> jax.Array:
  return fusion_barrier(y) if opts.materialize else y


# A shift sum of more taps than this is cut into chunks of whole kernel rows of at most
# SHIFT_CHUNK_TAPS taps, each running sum written once (`_written`): in one fused loop XLA:CPU's
# code runs several times slower per tap past ~100 taps (13x13 on 7x7x998 maps, batch 8: 33.0 ms
# forward in one loop, 4.1 in 25-tap chunks).
SHIFT_ONE_LOOP_TAPS = 49
SHIFT_CHUNK_TAPS = 25


def _shift_sum(x, kernel, pad_h, pad_w, opts):
  kh, kw, _ = kernel.shape
  _, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
  rows = kh if kh * kw <= SHIFT_ONE_LOOP_TAPS else max(1, SHIFT_CHUNK_TAPS // kw)
  out = None
  for i in range(kh):
    for j in range(kw):
      t = xp[:, i:i + h, j:j + w, :] * kernel[i, j]
      out = t if out is None else out + t
    if (i + 1) % rows == 0 and i + 1 < kh:
      out = _written(out, opts)  # the same order of additions as one chain, in several loops.
  return _written(out, opts)


def _tree_sum(q: jax.Array) -> jax.Array:
  """Sum over all axes but the last, as halving trees of slices.

  Elementwise adds that XLA:CPU fuses into one loop vectorized along the channels; its reduce over
  leading axes is not (the row-block loop of such reduces that this replaced was 1.6-6.6x slower on
  SLaK-T / ConvNeXt-T stage maps, measured interleaved).
  """
  for _ in range(q.ndim - 1):
    odd = []
    while q.shape[0] > 1:
      n = q.shape[0]
      if n % 2:
        odd.append(q[n - 1])
      q = q[:n // 2] + q[n // 2:2 * (n // 2)]
    q = functools.reduce(jnp.add, odd, q[0])
  return q


def _tap_grads(tap_sum: Callable, x, g, kernel_shape, pad_h, pad_w):
  """dL/dkernel of the shift form, tap by tap: `tap_sum(x slice, g)` sums each tap's products (fp32)."""
  kh, kw, _ = kernel_shape
  _, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0))).astype(jnp.float32)
  g = g.astype(jnp.float32)
  taps = [tap_sum(xp[:, i:i + h, j:j + w], g) for i in range(kh) for j in range(kw)]
  return jnp.stack(taps).reshape(kernel_shape)


def _tree_tap(xs: jax.Array, g: jax.Array) -> jax.Array:
  """One tap's products summed by `_tree_sum` over batch, rows and columns."""
  return _tree_sum(xs * g)


def _batch_tree_tap(xs: jax.Array, g: jax.Array) -> jax.Array:
  """One tap's products added image by image, then `_tree_sum` over the flattened pixels.

  On small maps and batches XLA:CPU then keeps each tap in one fused loop; `_tree_tap` there writes
  the whole product out and sums it in several passes: 1.4-4.6x slower on 14x14 and 7x7 maps at
  batch 1-16. This form loses (1.2-4.9x) on 28x28 maps, at 14x14 from 16 images and at 64 images on
  4x4-16x16 maps (the kernel gradient alone, measured interleaved).
  """
  q = functools.reduce(jnp.add, [xs[n] * g[n] for n in range(g.shape[0])])
  return _tree_sum(q.reshape(-1, q.shape[-1]))


def _fft_kernel_grad(x, g, kernel_shape, pad_h, pad_w):
  """dL/dkernel as one FFT correlation of the padded input with g, summed over the batch in the
  spectrum (only C inverse transforms)."""
  kh, kw, _ = kernel_shape
  _, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
  # Lags 0..k-1 of a length-(h+k-1) input against a length-h g: a grid >= h+k-1 never wraps them.
  fh, fw = _fft_size(h + kh - 1), _fft_size(w + kw - 1)
  xf = jnp.fft.rfft2(xp, s=(fh, fw), axes=(1, 2))
  gf = jnp.fft.rfft2(g, s=(fh, fw), axes=(1, 2))
  corr = jnp.fft.irfft2(jnp.sum(xf * jnp.conj(gf), axis=0), s=(fh, fw), axes=(0, 1))
  return corr[:kh, :kw]


_KERNEL_GRADS = {'tree': functools.partial(_tap_grads, _tree_tap),
                 'batch_tree': functools.partial(_tap_grads, _batch_tree_tap), 'fft': _fft_kernel_grad}


def kernel_grad_form(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...]) -> str:
  """The shift forms' kernel gradient for this shape (measured, benchmarks/depthwise.py).

  The FFT correlation for 49+ taps on maps larger than 28x28 (its cost grows as log(H*W) per pixel,
  the tree's as the taps); per-image sums first (`_batch_tree_tap`) on maps up to 14x14 at up to 16
  images and 1568 pixels in all; the tree sums otherwise.
  """
  b, h, w = x_shape[:3]
  if kernel_shape[0] * kernel_shape[1] >= 49 and h * w > 28 * 28:
    return 'fft'
  if h * w <= 14 * 14 and b <= 16 and b * h * w <= 8 * 14 * 14:
    return 'batch_tree'
  return 'tree'


def _with_shift_vjp(tap_sum: Form) -> Form:
  """`tap_sum` (a shift sum, its output written once) with the shift forms' custom VJP: the input
  gradient is the same sum on g with the flipped kernel, pads swapped; the kernel gradient one of
  _KERNEL_GRADS (`options.kernel_grad`, or `kernel_grad_form` for 'auto')."""

  @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
  def form(x, kernel, pad_h, pad_w, opts):
    return tap_sum(x, kernel, pad_h, pad_w, opts)

  def fwd(x, kernel, pad_h, pad_w, opts):
    return tap_sum(x, kernel, pad_h, pad_w, opts), (x, kernel)

  def bwd(pad_h, pad_w, opts, res, g):
    x, kernel = res
    g = _written(g, opts)  # read by every tap of the kernel gradient.
    gx = tap_sum(g, kernel[::-1, ::-1], pad_h[::-1], pad_w[::-1], opts)
    grad = opts.kernel_grad if opts.kernel_grad != 'auto' else kernel_grad_form(x.shape, kernel.shape)
    gk = _KERNEL_GRADS[grad](x, g, kernel.shape, pad_h, pad_w)
    return gx, gk.astype(kernel.dtype)

  form.defvjp(fwd, bwd)
  return form


# Sum of kh*kw shifted, channel-scaled slices, in NHWC.
_shift = _with_shift_vjp(_shift_sum)


# `shift_cb` computes on channel blocks of this many lanes (one 256-bit vector of fp32, the width
# XLA:CPU vectorizes its loops to on these hosts): each block of each image a contiguous (H, W, 8)
# plane.
SHIFT_CB_LANES = 8
# Taps per loop of `shift_cb`, its sums split evenly (255 taps: 6 loops of 43, not 5 of 50 and one
# of 5, which XLA fused with the input's transpose), and the independent running sums per loop.
SHIFT_CB_CHUNK_TAPS = 50
SHIFT_CB_ACCUMULATORS = 4
# Kernels longer than SHIFT_CB_BAND_ABOVE on an axis: the output is cut into `options.bands` bands of
# rows along it, each summing only the kernel rows that reach the map from there (on 28x28 and
# smaller maps half of a SLaK kernel's taps fall on the padding). SLaK-T's 51x5 + 5x51 at batch 8,
# forward: 47 / 28 / 9.4 / 2.9 ms -> 40 / 16 / 4.5 / 1.4 at s1-s4 with 8 bands (1, 2 and 4 bands in
# between, 14 and 28 no better); ConvNeXt's 7x7: no gain. Each band is its own loops, so compile
# time grows with the count: SLaK-T's whole `merged_decom` forward (batch 8, 224 px) compiled in
# 82 / 48 / 37 s with 8 / 4 / 2 bands and ran in 978 / 967 / 1022 ms (`python
# benchmarks/teacher_forward.py --shift-cb-bands 8,2`, benchmarks/README.md): 4 is the default.
SHIFT_CB_BAND_ABOVE = 7


def _pairwise(terms: list[jax.Array]) -> jax.Array:
  """Sum of `terms` as a balanced tree."""
  while len(terms) > 1:
    terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
             for i in range(0, len(terms), 2)]
  return terms[0]


def _looped_sum(term: Callable, taps: list, opts: DepthwiseOptions) -> jax.Array:
  """Sum of `term(*tap)` over `taps`, in even loops of at most SHIFT_CB_CHUNK_TAPS taps, each with
  SHIFT_CB_ACCUMULATORS round-robin sums (one add chain per output is bound by the FMA latency; the
  first holds the previous loop's result) and written once (`_written`)."""
  loops = -(-len(taps) // SHIFT_CB_CHUNK_TAPS)
  per = -(-len(taps) // loops)
  accs: list[jax.Array] = []
  for start in range(0, len(taps), per):
    for n, tap in enumerate(taps[start:start + per], start=len(accs)):
      if n < SHIFT_CB_ACCUMULATORS:
        accs.append(term(*tap))
      else:
        accs[n % SHIFT_CB_ACCUMULATORS] = accs[n % SHIFT_CB_ACCUMULATORS] + term(*tap)
    accs = [_written(_pairwise(accs), opts)]
  return accs[0]


def row_bands(n: int, k: int, pad: int, count: int) -> list[tuple[int, int, int, int]]:
  """`count` even bands [o0, o1) of n output rows of a k-row kernel over a map with `pad` zero rows
  before it, each with the kernel rows [i0, i1) that reach a row of the map from the band."""
  edges = [b * n // count for b in range(count + 1)]
  return [(o0, o1, max(0, pad - o1 + 1), min(k, pad - o0 + n)) for o0, o1 in zip(edges, edges[1:])]


def _shift_cb_sum(x, kernel, pad_h, pad_w, opts):
  """The shift sum on a channel-blocked copy of the input: (C/8 * B, H, W, 8), back to NHWC after.

  In NHWC a tap's rows lie W*C floats apart, so a 51-row kernel on a 56x56x124 map reads 1.4 MB per
  output row and XLA:CPU's loop runs from L3 (8-20 GMAC/s); on 8-channel planes the same rows take
  100 KB. Taps summed by `_looped_sum`; a long kernel's output in bands (`opts.bands`), the copy
  padded only as far as the bands' taps reach.
  """
  kh, kw, c = kernel.shape
  if kw > kh:  # the long axis as rows, which the bands split.
    y = _shift_cb_sum(x.transpose(0, 2, 1, 3), kernel.transpose(1, 0, 2), pad_w, pad_h, opts)
    return y.transpose(0, 2, 1, 3)
  b, h, w, _ = x.shape
  lanes = SHIFT_CB_LANES
  cp = -(-c // lanes) * lanes
  bands = row_bands(h, kh, pad_h[0], min(opts.bands, h) if kh > SHIFT_CB_BAND_ABOVE else 1)
  before = max(0, *(pad_h[0] - o0 - i0 for o0, _, i0, _ in bands))
  after = max(0, *(o1 + i1 - 1 - pad_h[0] - h for _, o1, _, i1 in bands))
  hp, wp = h + before + after, w + sum(pad_w)
  xb = jnp.pad(x, ((0, 0), (before, after), pad_w, (0, cp - c))).reshape(b, hp, wp, cp // lanes, lanes)
  xb = _written(xb.transpose(3, 0, 1, 2, 4).reshape(cp // lanes * b, hp, wp, lanes), opts)
  kb = jnp.pad(kernel, ((0, 0), (0, 0), (0, cp - c))).reshape(kh, kw, cp // lanes, 1, 1, 1, lanes)
  kb = jnp.broadcast_to(kb, (kh, kw, cp // lanes, b, 1, 1, lanes))
  kb = kb.reshape(kh, kw, cp // lanes * b, 1, 1, lanes)
  at = before - pad_h[0]  # row of xb that kernel row 0 of output row 0 reads.
  outs = [_looped_sum(lambda i, j, o0=o0, o1=o1: xb[:, at + o0 + i:at + o1 + i, j:j + w, :] * kb[i, j],
                      [(i, j) for i in range(i0, i1) for j in range(kw)], opts)
          for o0, o1, i0, i1 in bands]
  y = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
  y = y.reshape(cp // lanes, b, h, w, lanes).transpose(1, 2, 3, 0, 4).reshape(b, h, w, cp)
  return y[..., :c]


_shift_cb = _with_shift_vjp(_shift_cb_sum)


_FAST_FFT = sorted({2**a * 3**b * 5**c for a in range(12) for b in range(7) for c in range(5)
                    if 2**a * 3**b * 5**c <= 4096})


def _fft_size(n: int) -> int:
  return next(s for s in _FAST_FFT if s >= n)


def _fft(x, kernel, pad_h, pad_w, opts=None):
  kh, kw, _ = kernel.shape
  _, h, w, _ = x.shape
  fh, fw = _fft_size(h + kh - 1), _fft_size(w + kw - 1)
  # Cross-correlation = convolution with the flipped kernel; the 'same' window starts at the
  # flipped kernel's (after-)pad, i.e. output[y] = full[y + kh - 1 - pad_before].
  kf = jnp.fft.rfft2(kernel[::-1, ::-1], s=(fh, fw), axes=(0, 1))
  xf = jnp.fft.rfft2(x, s=(fh, fw), axes=(1, 2))
  full = jnp.fft.irfft2(xf * kf, s=(fh, fw), axes=(1, 2))
  oh, ow = kh - 1 - pad_h[0], kw - 1 - pad_w[0]
  return full[:, oh:oh + h, ow:ow + w, :].astype(x.dtype)


def toeplitz_matrix(taps: jax.Array, pad_before: int, n: int) -> jax.Array:
  """(n, n, C) banded matrix T[o, i, c] = taps[i - o + pad_before, c] (0 outside the kernel).

  Built with a tile/reshape trick (no gather), so its transpose (the kernel gradient) is a cheap
  reshape-sum rather than a scatter.
  """
  k, c = taps.shape
  # full[e] = weight of offset e - (n-1), e in [0, 2n-2]; the kernel covers offsets -pad_before..k-1-pad_before.
  lo = n - 1 - pad_before
  full = jnp.pad(taps, ((lo, 2 * n - 1 - lo - k), (0, 0)))  # (2n-1, C)
  u = jnp.concatenate([full, jnp.zeros((1, c), taps.dtype)], 0)  # (2n, C)
  flat = jnp.tile(u, (n, 1))[:n * (2 * n - 1)]
  mat = flat.reshape(n, 2 * n - 1, c)  # mat[o, m] = u[(m - o) mod 2n]
  return mat[:, n - 1:2 * n - 1, :]  # T[o, i] = u[i - o + n - 1] = taps[i - o + pad_before]


def _toeplitz_h(x, kernel, pad_h, pad_w):
  """Long axis = H: y = sum_j T_j (along H) @ x shifted by j along W."""
  kh, kw, c = kernel.shape
  b, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (0, 0), pad_w, (0, 0)))
  # Stack the kw short-axis shifts into the contraction: (b, H, w, kw, c).
  xs = jnp.stack([xp[:, :, j:j + w, :] for j in range(kw)], axis=3)
  mats = jnp.stack([toeplitz_matrix(kernel[:, j, :], pad_h[0], h) for j in range(kw)], axis=2)
  return jnp.einsum('oijc,biwjc->bowc', mats, xs, precision=jax.lax.Precision.HIGHEST)


def _toeplitz(x, kernel, pad_h, pad_w, opts=None):
  """`_toeplitz_h` for any rectangular kernel: a wider one runs on the H/W-transposed input."""
  kh, kw, _ = kernel.shape
  if kh >= kw:
    return _toeplitz_h(x, kernel, pad_h, pad_w)
  y = _toeplitz_h(jnp.swapaxes(x, 1, 2), jnp.swapaxes(kernel, 0, 1), pad_w, pad_h)
  return jnp.swapaxes(y, 1, 2)


_FORMS: dict[str, Form] = {'xla': _xla, 'shift': _shift, 'shift_cb': _shift_cb, 'fft': _fft,
                           'toeplitz': _toeplitz}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _split(x, kernel, pad_h, pad_w, opts, infer, train):
  """Form `infer` when no gradient flows through (a frozen teacher); form `train`, forward and
  backward, when one does (its forward may keep what its backward reuses, e.g. the input's FFT)."""
  return _FORMS[infer](x, kernel, pad_h, pad_w, opts)


def _split_fwd(x, kernel, pad_h, pad_w, opts, infer, train):
  return jax.vjp(lambda x, k: _FORMS[train](x, k, pad_h, pad_w, opts), x, kernel)


def _split_bwd(pad_h, pad_w, opts, infer, train, vjp, g):
  return vjp(g)


_split.defvjp(_split_fwd, _split_bwd)


def pick_auto(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], platform: str) -> str:
  """The form `auto` takes for this shape on this platform (rules from benchmarks/depthwise.py).

  Either one form, or an 'inference/training' pair: the fastest forward when no gradient flows
  (a frozen teacher) and the fastest forward+backward when one does.
  """
  if platform != 'cpu':
    return 'xla'
  _, h, w, _ = x_shape
  kh, kw, _ = kernel_shape
  kh, kw = min(kh, 2 * h - 1), min(kw, 2 * w - 1)
  # Measured on a 2-core AMD EPYC at SLaK-T's and ConvNeXt-T's stage shapes, batch 1 and 8
  # (benchmarks/results/depthwise_cpu*.json; `shift_cb` against the earlier rules:
  # depthwise_cpu_shift_cb_sweep.json; its bands: depthwise_cpu_shift_cb_bands_sweep*.json).
  side, taps = max(h, w), kh * kw
  if taps <= 25:  # 5x5: shift sums in NHWC both ways (`shift_cb` ties or loses: its transposes).
    return 'shift'
  # ConvNeXt's 7x7 on every stage map, and any larger kernel on maps up to 7x7 (SLaK-T's stage 4:
  # 13x5 / 13x13, batch 8: 0.9 / 3.8 ms forward with `shift_cb`'s bands vs 1.8 / 5.3 with `shift`).
  if taps <= 49 or side <= 7:
    return 'shift_cb'
  if min(kh, kw) > 7:  # large square (merged) kernels: the 2-D FFT, but forward on maps <= 14
    infer, train = ('fft' if side > 14 else 'shift_cb'), 'fft'
  else:  # Kx5 / 5xK: forward channel-blocked shift sums; forward+backward those on 56x56 maps,
    # the banded matmul on maps <= 28, but on 14x14 at batch 1-2 `shift_cb`. Alone the two tie
    # there (47x5 / 5x47 fwd+bwd: `toeplitz` faster in 3 of 4 cases of
    # results/depthwise_cpu_s3_small_batch_bands.json, 2 of 2 of ..._shift_cb_bands_sweep.json, 1
    # of 8 in two more repeats), but in two full-table runs 47x5 at batch 1 read 1.08x and 1.12x
    # torch NCHW with `toeplitz`, and 0.64x with `shift_cb`.
    infer = 'shift_cb'
    small_batch_on_14 = side <= 14 and x_shape[0] <= 2
    train = 'toeplitz' if (h if kh >= kw else w) <= 28 and not small_batch_on_14 else 'shift_cb'
  return infer if infer == train else f'{infer}/{train}'


def _half_pads(kernel):
  """k // 2 zeros on both sides of each axis (torch's padding=k//2)."""
  kh, kw, _ = kernel.shape
  return (kh // 2, kh // 2), (kw // 2, kw // 2)


def depthwise_conv(x: jax.Array, kernel: jax.Array, kernels: Kernels) -> jax.Array:
  """Depthwise cross-correlation of NHWC `x` with a (kh, kw, C) kernel, zero 'same' padding per
  axis, in the form `kernels.depthwise` names (module docstring)."""
  impl = kernels.depthwise
  if impl == 'auto':
    impl = pick_auto(x.shape, kernel.shape, kernels.platform)
  infer, _, train = impl.partition('/')
  train = train or infer
  opts = kernels.depthwise_options
  kh, kw, _ = kernel.shape
  kernel = kernel.astype(x.dtype)
  if kh % 2 == 0 or kw % 2 == 0:
    # Padding k//2 on both sides of an even kernel changes the output size (as nn.Conv2d does);
    # only the grouped conv handles that. No reference model uses even depthwise kernels.
    return _xla(x, kernel, *_half_pads(kernel))
  if opts.crop:
    kernel, pad_h, pad_w = crop_kernel(kernel, x.shape[1], x.shape[2])
  else:
    pad_h, pad_w = _half_pads(kernel)
  if infer == train:
    return _FORMS[infer](x, kernel, pad_h, pad_w, opts)
  return _split(x, kernel, pad_h, pad_w, opts, infer, train)
