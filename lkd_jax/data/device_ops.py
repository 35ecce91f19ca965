"""JAX twins of augment.py's per-image ops, for the device side of the train pipeline (device_augment.py).

Each function takes one uint8 [H, W, 3] image (vmap it for a batch) and mirrors the TensorFlow op of
the same name in augment.py, which is tested against PIL; tests/data/test_device_ops.py holds each
twin to its TF op at a stated tolerance. Where they can differ, and why:
- Float32 throughout (JAX without x64): augment.py computes level arguments, rotation matrices and
  the auto-contrast LUT in float64. Blend factors and affine coefficients can therefore differ by
  one float32 ulp, moving a truncation or rounding by one level on rare pixels; auto_contrast uses
  the exact integer LUT floor(255 (i - lo) / (hi - lo)), which differs from PIL's float64
  int(i * scale - lo * scale) by one level on 0.43% of (lo, hi, i) entries.
- resize_from_canvas: the weights are scale_and_translate's (TF's antialiased resize), applied as
  two dense matrix products instead of span sums: float rounding moves rare pixels by one level.
Integer ops (equalize, invert, posterize, solarize, solarize_add, contrast's mean, the sharpness
kernel) are exact.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from lkd_jax.data import recipe

HIGHEST = jax.lax.Precision.HIGHEST   # float32 products on every backend (no TF32 / bf16 passes)


def to_uint8(x: jax.Array) -> jax.Array:
  """Round half to even and saturate a float image to uint8 (augment._to_uint8)."""
  return jnp.clip(jnp.round(x), 0.0, 255.0).astype(jnp.uint8)


# ----------------------------------------------------------------------------- resize


def _kernel_value(name: str, x: jax.Array) -> jax.Array:
  """TF sampling_kernels.h kernels at distances x >= 0."""
  if name == 'keyscubic':
    return jnp.where(x >= 2.0, 0.0, jnp.where(x >= 1.0, ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0,
                                              ((1.5 * x - 2.5) * x) * x + 1.0))
  if name == 'triangle':
    return jnp.maximum(1.0 - x, 0.0)
  radius = float(name[len('lanczos'):])
  pi = 3.14159265359
  safe = jnp.maximum(x, 1e-3)
  val = radius * jnp.sin(pi * safe) * jnp.sin(pi * safe / radius) / (pi * pi * safe * safe)
  return jnp.where(x > radius, 0.0, jnp.where(x <= 1e-3, 1.0, val))


def resize_weights(in_size: jax.Array, out_size: int, canvas: int, method: str) -> jax.Array:
  """float32 [out_size, canvas]: TF ScaleAndTranslate's antialiased weights (ComputeSpansCore) from
  the first in_size of `canvas` source pixels to out_size, zero on the rest."""
  name, radius = recipe.kernel(method)
  scale = jnp.float32(out_size) / in_size.astype(jnp.float32)   # tf.image.resize's scale
  inv_scale = 1.0 / scale
  kernel_scale = jnp.maximum(inv_scale, 1.0)
  sample = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * inv_scale
  n = in_size.astype(jnp.int32)
  start = jnp.clip(jnp.ceil(sample - radius * kernel_scale - 0.5).astype(jnp.int32), 0, n - 1)
  end = jnp.clip(jnp.floor(sample + radius * kernel_scale - 0.5).astype(jnp.int32), 0, n - 1) + 1
  src = jnp.arange(canvas, dtype=jnp.int32)[None]
  inside = (sample >= 0) & (sample <= in_size.astype(jnp.float32))
  used = (src >= start[:, None]) & (src < end[:, None]) & inside[:, None]
  pos = src.astype(jnp.float32) + 0.5 - sample[:, None]
  w = jnp.where(used, _kernel_value(name, jnp.abs(pos * (1.0 / kernel_scale))), 0.0)
  total = jnp.sum(w, axis=1, keepdims=True)
  ok = jnp.abs(total) >= 1000.0 * jnp.finfo(jnp.float32).tiny
  return jnp.where(ok, w * (1.0 / jnp.where(ok, total, 1.0)), 0.0)


def resize_from_canvas(canvas: jax.Array, hw: jax.Array, size: int, method: str) -> jax.Array:
  """The top-left hw[0] x hw[1] pixels of a uint8 [C, C, 3] canvas resized (antialiased) to uint8
  [size, size, 3]: augment.decode_and_random_crop's tf.image.resize. hw == (size, size) is exact
  identity (a crop the host already resized)."""
  c = canvas.shape[0]
  wy = resize_weights(hw[0], size, c, method)
  wx = resize_weights(hw[1], size, canvas.shape[1], method)
  x = canvas.astype(jnp.float32)
  rows = jnp.einsum('hwc,ow->hoc', x, wx, precision=HIGHEST)   # horizontal pass first, as TF
  return to_uint8(jnp.einsum('hoc,ph->poc', rows, wy, precision=HIGHEST))


# ----------------------------------------------------------------------------- RandAugment ops


def _histograms(image: jax.Array) -> jax.Array:
  """Per-channel 256-bin histograms, int32 [3, 256]."""
  x = image.reshape(-1, 3).astype(jnp.int32)
  return jnp.zeros((3, 256), jnp.int32).at[jnp.arange(3)[None], x].add(1)


def _apply_lut(image: jax.Array, lut: jax.Array) -> jax.Array:
  """Maps each channel through its int32 [3, 256] look-up table."""
  out = jnp.take_along_axis(lut.T, image.reshape(-1, 3).astype(jnp.int32), axis=0)
  return out.reshape(image.shape).astype(jnp.uint8)


def _lo_hi(hist: jax.Array) -> tuple[jax.Array, jax.Array]:
  nz = hist > 0
  return jnp.argmax(nz, axis=1), 255 - jnp.argmax(nz[:, ::-1], axis=1)


def auto_contrast(image: jax.Array) -> jax.Array:
  """PIL ImageOps.autocontrast (cutoff 0) with the exact integer LUT (see the module note)."""
  lo, hi = _lo_hi(_histograms(image))
  ix = jnp.arange(256)[None]
  lut = jnp.clip((255 * (ix - lo[:, None])) // jnp.maximum(hi - lo, 1)[:, None], 0, 255)
  return _apply_lut(image, jnp.where((hi > lo)[:, None], lut, ix))


def equalize(image: jax.Array) -> jax.Array:
  """PIL ImageOps.equalize: step = (n - last used bin's count) // 255, lut = (step//2 + cdf) // step."""
  hist = _histograms(image)
  _, hi = _lo_hi(hist)
  last = jnp.take_along_axis(hist, hi[:, None], axis=1)
  step = (jnp.sum(hist, 1, keepdims=True) - last) // 255
  cdf = jnp.cumsum(hist, axis=1) - hist
  lut = (step // 2 + cdf) // jnp.maximum(step, 1)
  return _apply_lut(image, jnp.where(step > 0, jnp.minimum(lut, 255), jnp.arange(256)[None]))


def invert(image: jax.Array) -> jax.Array:
  """PIL ImageOps.invert."""
  return 255 - image


def posterize(image: jax.Array, bits: jax.Array) -> jax.Array:
  """timm posterize: keep the top `bits` bits (identity for bits >= 8, black for 0)."""
  step = jnp.left_shift(1, 8 - jnp.clip(bits, 0, 8))
  return (image.astype(jnp.int32) // step * step).astype(jnp.uint8)


def solarize(image: jax.Array, thresh: jax.Array) -> jax.Array:
  """PIL ImageOps.solarize: invert pixels >= thresh."""
  return jnp.where(image.astype(jnp.int32) < thresh, image, 255 - image)


def solarize_add(image: jax.Array, add: jax.Array, thresh: int = 128) -> jax.Array:
  """timm solarize_add: pixels < thresh get min(255, p + add)."""
  x = image.astype(jnp.int32)
  return jnp.where(x < thresh, jnp.minimum(x + add, 255), x).astype(jnp.uint8)


def _gray(image: jax.Array) -> jax.Array:
  """PIL convert('L'): (19595 R + 38470 G + 7471 B + 0x8000) >> 16, int32 [H, W, 1]."""
  x = image.astype(jnp.int32)
  return (x[..., :1] * 19595 + x[..., 1:2] * 38470 + x[..., 2:] * 7471 + 0x8000) >> 16


def _blend(degenerate: jax.Array, image: jax.Array, factor: jax.Array) -> jax.Array:
  """PIL Image.blend(degenerate, image, factor): float32 d + f * (i - d), clipped, truncated."""
  d = degenerate.astype(jnp.float32)
  out = d + factor.astype(jnp.float32) * (image.astype(jnp.float32) - d)
  return jnp.clip(out, 0.0, 255.0).astype(jnp.uint8)


def color(image: jax.Array, factor: jax.Array) -> jax.Array:
  """PIL ImageEnhance.Color: blend with the L (grayscale) image."""
  return _blend(jnp.broadcast_to(_gray(image), image.shape), image, factor)


def contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """PIL ImageEnhance.Contrast: blend with the constant int(mean(L) + 0.5) (integer arithmetic)."""
  n = image.shape[0] * image.shape[1]
  mean = (2 * jnp.sum(_gray(image)) + n) // (2 * n)
  return _blend(jnp.broadcast_to(mean, image.shape), image, factor)


def brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
  """PIL ImageEnhance.Brightness: blend with black."""
  return _blend(jnp.zeros_like(image), image, factor)


def sharpness(image: jax.Array, factor: jax.Array) -> jax.Array:
  """PIL ImageEnhance.Sharpness: blend with SMOOTH ([1 1 1; 1 5 1; 1 1 1]/13, rounded, border kept)."""
  x = image.astype(jnp.float32)
  h, w = image.shape[:2]
  s = sum(x[dy:h - 2 + dy, dx:w - 2 + dx] for dy in range(3) for dx in range(3)) + 4.0 * x[1:-1, 1:-1]
  smooth = x.at[1:-1, 1:-1].set(jnp.floor(s / 13.0 + 0.5))
  return _blend(smooth, image, factor)


def _affine(image: jax.Array, a, b, c, d, e, f) -> jax.Array:
  """PIL Image.transform(AFFINE, (a..f)), bilinear, fill FILL: TF ImageProjectiveTransformV3's
  bilinear sampling (augment._affine) on the image minus FILL, zero outside."""
  h, w = image.shape[:2]
  fill = jnp.asarray(recipe.FILL, jnp.float32)
  img = image.astype(jnp.float32) - fill
  # PIL samples at pixel centres (x + 0.5); TF at integer indices.
  c = c + 0.5 * (a + b - 1.0)
  f = f + 0.5 * (d + e - 1.0)
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing='ij')
  in_x, in_y = a * xs + b * ys + c, d * xs + e * ys + f
  x0, y0 = jnp.floor(in_x), jnp.floor(in_y)
  x1, y1 = x0 + 1.0, y0 + 1.0

  def read(yy, xx):
    ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    yi, xi = jnp.clip(yy, 0, h - 1).astype(jnp.int32), jnp.clip(xx, 0, w - 1).astype(jnp.int32)
    return jnp.where(ok[..., None], img[yi, xi], 0.0)

  top = (x1 - in_x)[..., None] * read(y0, x0) + (in_x - x0)[..., None] * read(y0, x1)
  bottom = (x1 - in_x)[..., None] * read(y1, x0) + (in_x - x0)[..., None] * read(y1, x1)
  out = (y1 - in_y)[..., None] * top + (in_y - y0)[..., None] * bottom
  return to_uint8(out + fill)


def rotate(image: jax.Array, degrees: jax.Array) -> jax.Array:
  """PIL Image.rotate(degrees) (counter-clockwise about the image centre)."""
  cy, cx = image.shape[0] / 2.0, image.shape[1] / 2.0
  ang = -degrees * (math.pi / 180.0)
  a, b, d, e = jnp.cos(ang), jnp.sin(ang), -jnp.sin(ang), jnp.cos(ang)
  return _affine(image, a, b, -a * cx - b * cy + cx, d, e, -d * cx - e * cy + cy)


def shear_x(image: jax.Array, factor: jax.Array) -> jax.Array:
  """timm shear_x: affine (1, factor, 0, 0, 1, 0)."""
  return _affine(image, 1.0, factor, 0.0, 0.0, 1.0, 0.0)


def shear_y(image: jax.Array, factor: jax.Array) -> jax.Array:
  """timm shear_y: affine (1, 0, 0, factor, 1, 0)."""
  return _affine(image, 1.0, 0.0, 0.0, factor, 1.0, 0.0)


def translate_x_rel(image: jax.Array, pct: jax.Array) -> jax.Array:
  """timm translate_x_rel: shift by pct * width pixels (content moves left for pct > 0)."""
  return _affine(image, 1.0, 0.0, pct * image.shape[1], 0.0, 1.0, 0.0)


def translate_y_rel(image: jax.Array, pct: jax.Array) -> jax.Array:
  """timm translate_y_rel: shift by pct * height pixels (content moves up for pct > 0)."""
  return _affine(image, 1.0, 0.0, 0.0, 0.0, 1.0, pct * image.shape[0])


OPS = {
    'AutoContrast': auto_contrast, 'Equalize': equalize, 'Invert': invert, 'Rotate': rotate,
    'Posterize': posterize, 'PosterizeIncreasing': posterize, 'Solarize': solarize,
    'SolarizeIncreasing': solarize, 'SolarizeAdd': solarize_add, 'Color': color,
    'ColorIncreasing': color, 'Contrast': contrast, 'ContrastIncreasing': contrast,
    'Brightness': brightness, 'BrightnessIncreasing': brightness, 'Sharpness': sharpness,
    'SharpnessIncreasing': sharpness, 'ShearX': shear_x, 'ShearY': shear_y,
    'TranslateXRel': translate_x_rel, 'TranslateYRel': translate_y_rel,
}


def apply_op(image: jax.Array, name: str, magnitude, negate=False) -> jax.Array:
  """One timm RandAugment op at magnitude `magnitude` (sign flipped when negate), as augment.apply_op."""
  if name not in OPS:
    raise ValueError(f'Unknown RandAugment op {name!r}; known: {sorted(OPS)}.')
  level_fn = recipe.LEVEL_TO_ARG[name]
  if level_fn is None:
    return OPS[name](image)
  m = jnp.asarray(magnitude, jnp.float32)
  s = jnp.where(negate, jnp.float32(-1.0), jnp.float32(1.0))
  arg = level_fn(m, s, jnp)
  return OPS[name](image, arg.astype(jnp.int32) if name in recipe.INT_ARG_OPS else arg)


def erase_fill(z: jax.Array) -> jax.Array:
  """Random erasing's uint8 fill for normalised values z: round(255 * (mean + std * z)), clipped."""
  mean, std = jnp.asarray(recipe.IMAGENET_DEFAULT_MEAN), jnp.asarray(recipe.IMAGENET_DEFAULT_STD)
  return to_uint8(255.0 * (mean + std * z))
