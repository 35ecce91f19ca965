"""Per-example ImageNet train/eval preprocessing in TensorFlow (tf.data map functions, CPU host).

With data.augment_on 'device' ('auto' on an accelerator) the host runs only train_preprocess_for_device (decode
of the random-crop window); device_augment.py finishes the recipe with JAX twins of these ops
(device_ops.py), held to them by tests/data/test_device_augment.py. augment_on='host' runs
train_preprocess here in full.

Reproduces the timm recipe of the ConvNeXt / SLaK papers (`timm.data.create_transform` with
`--aa rand-m9-mstd0.5-inc1 --reprob 0.25 --remode pixel --train_interpolation bicubic`). Both entry
points return uint8 [size, size, 3]; mean/std normalisation (`lkd_jax/step.py::normalize`) and
mixup/cutmix (`lkd_jax/data/mix.py`) run later on device. Sources of each recipe constant:

- Random-resized crop: timm `data/transforms.py::RandomResizedCropAndInterpolation.get_params`
  (scale (0.08, 1), log-uniform ratio (3/4, 4/3), 10 tries, fallback central crop), sampled here
  exactly (not tf.image.sample_distorted_bounding_box, whose area and aspect distributions differ),
  then a bicubic antialiased resize (PIL resizes antialiased).
- Decoding: libjpeg's accurate integer IDCT, as PIL: the decoded JPEG pixels are PIL's.
- Eval: timm `transforms_imagenet_eval` / ConvNeXt `build_transform`: shorter side to
  floor(size / crop_pct) (crop_pct 0.875: 256 for 224) with torchvision's long side
  int(S * long / short), then `CenterCrop` with top = round((H - size) / 2) (half to even).
- Horizontal flip p=0.5: timm `RandomHorizontalFlip(p=hflip)`; colour jitter is off when AA is on.
- RandAugment: timm `data/auto_augment.py` (`rand_augment_transform`, `_RAND_INCREASING_TRANSFORMS`,
  `_LEVEL_DENOM` 10, op prob 0.5, magnitude ~ N(m, mstd) clipped to [0, 10], random sign flips,
  the `*_level_to_arg` formulas, fill `img_mean` = round(255 * IMAGENET_DEFAULT_MEAN) =
  (124, 116, 104) from `transforms_factory.transforms_imagenet_train`). Pixel ops reproduce PIL's
  ImageOps / ImageEnhance integer arithmetic (L = (19595 R + 38470 G + 7471 B + 2^15) >> 16,
  Image.blend truncation, SMOOTH kernel with copied borders) and match PIL exactly.
- Random erasing: timm `data/random_erasing.py::RandomErasing` (area 0.02-1/3, log aspect
  (0.3, 1/0.3), 10 tries, strict `<` fit test, 'pixel' = per-pixel N(0, 1) in normalised space).

Deviations from timm, chosen on purpose:
- Rotate/Shear/Translate use bilinear interpolation (timm: bicubic with `--train_interpolation
  bicubic`): `ImageProjectiveTransformV3` offers nearest/bilinear only. Geometry (PIL's pixel-centre
  convention, rotation centre, directions) is PIL's; border pixels blend with the fill colour where
  PIL clamps.
- Random erasing writes uint8 before normalisation: fill = round(255 * (mean + std * z)), z ~ N(0, 1),
  clipped to [0, 255], so that after `normalize` it is z up to rounding (1/57 std) and clipping.
- RandAugment spec parsing is stricter than timm's: an unknown key or a section without a number
  raises ValueError (timm asserts / silently skips), and 'inc0' turns the increasing ops off (timm's
  `bool('0')` is True).
- Random-crop sides are at least 1 pixel (timm could return an empty crop on images of 1-2 pixels).
- Resampling is TF's float scale_and_translate (Keys cubic a=-0.5, as PIL): vs PIL's fixed-point
  two-pass resize (rounded to uint8 between passes) it is within 1 level on 99.9% of pixels, a few
  levels on sharp edges. Only fixed interpolations (no timm 'random').
- PosterizeIncreasing at magnitude 10 keeps 0 bits (black), as the Pillow of the papers' time did;
  Pillow 13 (installed here) raises ValueError there.
- For chroma-subsampled JPEGs the fused decode-and-crop can differ from decode-then-crop in the
  window's last column (libjpeg upsampling at the edge; not seen on the ImageNet sample).

Randomness is stateless (`tf.random.stateless_*` from a [2] int32/int64 seed, split with
`tf.random.experimental.stateless_split`): the same seed gives the same output, in eager mode and
inside `tf.data.Dataset.map`.
"""
from __future__ import annotations

import math
from typing import Callable

import ml_collections
import tensorflow as tf

from lkd_jax.data.recipe import (FILL, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD,  # noqa: F401
                                 INT_ARG_OPS, LEVEL_TO_ARG, RAND_CHOICE_WEIGHTS_0,
                                 RAND_INCREASING_TRANSFORMS, RAND_TRANSFORMS, RandAugmentSpec,
                                 parse_rand_augment_spec)
from lkd_jax.data.recipe import kernel as _kernel


# ----------------------------------------------------------------------------- small helpers


def _to_uint8(x: tf.Tensor) -> tf.Tensor:
  """Round half to even and saturate a float image to uint8."""
  return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def _split(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
  """`num` independent [2] seeds from one."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _decode_crop(data: tf.Tensor, window_fn: Callable[[tf.Tensor], tf.Tensor]
                 ) -> tuple[tf.Tensor, tf.Tensor]:
  """(uint8 RGB pixels inside window_fn([h, w]) = [top, left, ch, cw], [h, w]) from encoded bytes.

  JPEG bytes use the fused tf.io.decode_and_crop_jpeg with the accurate integer IDCT (libjpeg ISLOW,
  PIL's choice: identical pixels to PIL; TF's default IFAST differs by ~1.1 levels on average, up to
  ~20, for ~10% less decode time); other formats (PNG, GIF, BMP) are decoded whole, then sliced.
  Grayscale, CMYK and alpha inputs come out as RGB.
  """
  def jpeg() -> tuple[tf.Tensor, tf.Tensor]:
    hw = tf.image.extract_jpeg_shape(data)[:2]
    return tf.io.decode_and_crop_jpeg(data, window_fn(hw), channels=3,
                                      dct_method='INTEGER_ACCURATE'), hw

  def other() -> tuple[tf.Tensor, tf.Tensor]:
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    hw = tf.shape(image)[:2]
    win = window_fn(hw)
    return tf.slice(image, [win[0], win[1], 0], [win[2], win[3], 3]), hw

  image, hw = tf.cond(tf.io.is_jpeg(data), jpeg, other)
  return tf.ensure_shape(image, [None, None, 3]), hw


# ----------------------------------------------------------------------------- crops


def rrc_window(hw: tf.Tensor, seed: tf.Tensor, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tf.Tensor:
  """timm RandomResizedCropAndInterpolation.get_params on an [h, w] image: int32 [top, left, ch, cw]."""
  h, w = tf.unstack(tf.cast(hw, tf.float64))
  u = tf.random.stateless_uniform([4, 10], seed, dtype=tf.float64)
  target = h * w * (scale[0] + (scale[1] - scale[0]) * u[0])
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = tf.exp(log_lo + (log_hi - log_lo) * u[1])
  cw, ch = tf.round(tf.sqrt(target * aspect)), tf.round(tf.sqrt(target / aspect))
  ok = (cw >= 1) & (cw <= w) & (ch >= 1) & (ch <= h)
  top = tf.minimum(tf.floor(u[2] * (h - ch + 1)), h - ch)    # random.randint(0, h - ch)
  left = tf.minimum(tf.floor(u[3] * (w - cw + 1)), w - cw)
  k = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)   # first successful try
  tried = tf.stack([top[k], left[k], ch[k], cw[k]])
  lo_r, hi_r = min(ratio), max(ratio)                         # fallback: central crop
  in_ratio = w / h
  fw = tf.where(in_ratio > hi_r, tf.round(h * hi_r), w)
  fh = tf.where(in_ratio < lo_r, tf.round(w / lo_r), h)
  fallback = tf.stack([tf.floor((h - fh) / 2), tf.floor((w - fw) / 2), fh, fw])
  return tf.cast(tf.where(tf.reduce_any(ok), tried, fallback), tf.int32)


def decode_and_random_crop(data: tf.Tensor, seed: tf.Tensor, size: int, scale=(0.08, 1.0),
                           ratio=(3 / 4, 4 / 3), method: str = 'bicubic') -> tf.Tensor:
  """timm random-resized crop of encoded bytes, resized (antialiased) to uint8 [size, size, 3]."""
  _kernel(method)
  crop, _ = _decode_crop(data, lambda hw: rrc_window(hw, seed, scale, ratio))
  return _resize(crop, size, method)


def _resize(image: tf.Tensor, size: int, method: str) -> tf.Tensor:
  """Antialiased resize of a uint8 image to uint8 [size, size, 3] (PIL resizes antialiased)."""
  return _to_uint8(tf.image.resize(image, [size, size], method=method, antialias=True))


def _center_plan(hw: tf.Tensor, size: int, crop_pct: float, radius: float):
  """Resize-shorter-then-centre-crop as a source window plus the (scale, translation) of one resample.

  Returns (window [top, left, h, w] int32 in source pixels, scale [2] f32, translation [2] f32)
  such that resampling the window with scale_and_translate equals resizing the whole image to
  (new_h, new_w) and cropping [top:top+size, left:left+size]: the window keeps the full kernel
  support (radius * max(1, 1/scale) + 1 px) around the crop, so only the pixels that the resize
  would read are decoded.
  """
  s = tf.constant(math.floor(size / crop_pct), tf.int64)
  h, w = tf.unstack(tf.cast(hw, tf.int64))
  new_long = (s * tf.maximum(h, w)) // tf.minimum(h, w)     # torchvision: int(S * long / short)
  new_h, new_w = tf.where(w <= h, new_long, s), tf.where(w <= h, s, new_long)
  new = tf.cast(tf.stack([new_h, new_w]), tf.float64)
  src = tf.cast(tf.stack([h, w]), tf.float64)
  off = tf.round((new - size) / 2.0)                        # CenterCrop: round half to even
  scl = new / src
  pad = radius * tf.maximum(1.0 / scl, 1.0) + 1.0
  lo = tf.clip_by_value(tf.floor(off / scl - pad), 0.0, src)
  hi = tf.clip_by_value(tf.math.ceil((off + size) / scl + pad), 0.0, src)
  window = tf.cast(tf.concat([lo, hi - lo], 0), tf.int32)
  return window, tf.cast(scl, tf.float32), tf.cast(scl * lo - off, tf.float32)


def decode_and_center_crop(data: tf.Tensor, size: int, crop_pct: float = 0.875,
                           method: str = 'bicubic') -> tf.Tensor:
  """timm eval crop (shorter side to floor(size/crop_pct), centre size x size) -> uint8 [size, size, 3].

  Choice: one antialiased resample of only the decoded window (fused JPEG decode-and-crop) with the
  scale and offset of the full resize gives the pixels of "resize whole image, then crop" (<= 1
  level of float rounding) without decoding or resizing the rest. Measured vs timm's PIL transform
  on ImageNet photos: mean 0.2 levels, <= 1 on 99.9% of pixels, up to ~8 on sharp edges.
  """
  if not 0.0 < crop_pct <= 1.0:
    raise ValueError(f'crop_pct must be in (0, 1], got {crop_pct}.')
  kernel, radius = _kernel(method)
  crop, hw = _decode_crop(data, lambda hw: _center_plan(hw, size, crop_pct, radius)[0])
  _, scl, trans = _center_plan(hw, size, crop_pct, radius)
  out = tf.raw_ops.ScaleAndTranslate(
      images=tf.cast(crop, tf.float32)[None], size=tf.constant([size, size]), scale=scl,
      translation=trans, kernel_type=kernel, antialias=True)
  return tf.ensure_shape(_to_uint8(out[0]), [size, size, 3])


# ----------------------------------------------------------------------------- RandAugment ops
# Each op: (uint8 [H, W, 3] image, level argument tensor) -> uint8 image, as the PIL function that
# timm's NAME_TO_OP calls.


def _histograms(image: tf.Tensor) -> tf.Tensor:
  """Per-channel 256-bin histograms, int32 [3, 256]."""
  x = tf.reshape(tf.cast(image, tf.int32), [-1, 3]) + tf.constant([0, 256, 512])
  return tf.reshape(tf.math.bincount(tf.reshape(x, [-1]), minlength=768, maxlength=768), [3, 256])


def _apply_lut(image: tf.Tensor, lut: tf.Tensor) -> tf.Tensor:
  """Maps each channel through its int32 [3, 256] look-up table."""
  x = tf.transpose(tf.reshape(tf.cast(image, tf.int32), [-1, 3]))
  y = tf.gather(lut, x, batch_dims=1)
  return tf.reshape(tf.cast(tf.transpose(y), tf.uint8), tf.shape(image))


def _lo_hi(hist: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Lowest and highest non-empty bin per channel."""
  nz = tf.cast(hist > 0, tf.int32)
  lo = tf.argmax(nz, axis=1, output_type=tf.int32)
  hi = 255 - tf.argmax(tf.reverse(nz, [1]), axis=1, output_type=tf.int32)
  return lo, hi


def auto_contrast(image: tf.Tensor, _=None) -> tf.Tensor:
  """PIL ImageOps.autocontrast (cutoff 0): per channel lut = int(i * scale - lo * scale), float64."""
  lo, hi = _lo_hi(_histograms(image))
  scale = 255.0 / tf.cast(tf.maximum(hi - lo, 1), tf.float64)[:, None]
  ix = tf.range(256, dtype=tf.float64)[None]
  lut = tf.cast(tf.clip_by_value(tf.floor(ix * scale - tf.cast(lo, tf.float64)[:, None] * scale),
                                 0.0, 255.0), tf.int32)
  lut = tf.where((hi > lo)[:, None], lut, tf.range(256)[None])
  return _apply_lut(image, lut)


def equalize(image: tf.Tensor, _=None) -> tf.Tensor:
  """PIL ImageOps.equalize: step = (n - last used bin's count) // 255, lut = (step//2 + cdf) // step."""
  hist = _histograms(image)
  _, hi = _lo_hi(hist)
  last = tf.gather(hist, hi, batch_dims=1)
  step = ((tf.reduce_sum(hist, 1) - last) // 255)[:, None]
  lut = (step // 2 + tf.cumsum(hist, axis=1, exclusive=True)) // tf.maximum(step, 1)
  lut = tf.where(step > 0, tf.minimum(lut, 255), tf.range(256)[None])
  return _apply_lut(image, lut)


def invert(image: tf.Tensor, _=None) -> tf.Tensor:
  """PIL ImageOps.invert."""
  return 255 - image


def posterize(image: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
  """timm posterize: keep the top `bits` bits (identity for bits >= 8)."""
  step = tf.bitwise.left_shift(1, 8 - tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8))  # 2^(8-bits)
  return tf.cast(tf.cast(image, tf.int32) // step * step, tf.uint8)   # (TF clamps shifts >= 8)


def solarize(image: tf.Tensor, thresh: tf.Tensor) -> tf.Tensor:
  """PIL ImageOps.solarize: invert pixels >= thresh."""
  return tf.where(tf.cast(image, tf.float64) < tf.cast(thresh, tf.float64), image, 255 - image)


def solarize_add(image: tf.Tensor, add: tf.Tensor, thresh: int = 128) -> tf.Tensor:
  """timm solarize_add: pixels < thresh get min(255, p + add)."""
  x = tf.cast(image, tf.int32)
  return tf.cast(tf.where(x < thresh, tf.minimum(x + tf.cast(add, tf.int32), 255), x), tf.uint8)


def _gray(image: tf.Tensor) -> tf.Tensor:
  """PIL convert('L'): (19595 R + 38470 G + 7471 B + 0x8000) >> 16, int32 [H, W, 1]."""
  x = tf.cast(image, tf.int32)
  return (x[..., :1] * 19595 + x[..., 1:2] * 38470 + x[..., 2:] * 7471 + 0x8000) // 65536


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """PIL Image.blend(degenerate, image, factor): float32 d + f * (i - d), clipped, truncated."""
  d = tf.cast(degenerate, tf.float32)
  out = d + tf.cast(factor, tf.float32) * (tf.cast(image, tf.float32) - d)
  return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def color(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """PIL ImageEnhance.Color: blend with the L (grayscale) image."""
  return _blend(tf.broadcast_to(_gray(image), tf.shape(image)), image, factor)


def contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """PIL ImageEnhance.Contrast: blend with the constant int(mean(L) + 0.5)."""
  mean = tf.floor(tf.reduce_mean(tf.cast(_gray(image), tf.float64)) + 0.5)
  return _blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """PIL ImageEnhance.Brightness: blend with black."""
  return _blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """PIL ImageEnhance.Sharpness: blend with SMOOTH ([1 1 1; 1 5 1; 1 1 1]/13, rounded, border kept)."""
  x = tf.cast(image, tf.float32)
  k = tf.tile(tf.constant([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]])[:, :, None, None], [1, 1, 3, 1])
  s = tf.nn.depthwise_conv2d(x[None], k, [1, 1, 1, 1], 'VALID')[0]
  smooth = tf.pad(tf.floor(s / 13.0 + 0.5), [[1, 1], [1, 1], [0, 0]])
  inner = tf.pad(tf.ones(tf.shape(s)[:2], tf.bool), [[1, 1], [1, 1]])[..., None]
  return _blend(tf.where(inner, smooth, x), image, factor)


def _affine(image: tf.Tensor, a, b, c, d, e, f) -> tf.Tensor:
  """PIL Image.transform(AFFINE, (a..f)) (output -> input, continuous coords), bilinear, fill FILL."""
  m = [tf.cast(v, tf.float32) for v in (a, b, c, d, e, f)]
  # PIL samples at pixel centres (x + 0.5); TF at integer indices.
  t = tf.stack([m[0], m[1], m[2] + 0.5 * (m[0] + m[1] - 1.0),
                m[3], m[4], m[5] + 0.5 * (m[3] + m[4] - 1.0), 0.0, 0.0])
  fill = tf.constant(FILL, tf.float32)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=(tf.cast(image, tf.float32) - fill)[None], transforms=t[None],
      output_shape=tf.shape(image)[:2], fill_value=0.0, interpolation='BILINEAR',
      fill_mode='CONSTANT')
  return _to_uint8(out[0] + fill)


def rotate(image: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
  """PIL Image.rotate(degrees) (counter-clockwise about the image centre)."""
  hw = tf.cast(tf.shape(image)[:2], tf.float64)
  cy, cx = hw[0] / 2.0, hw[1] / 2.0
  ang = -tf.cast(degrees, tf.float64) * (math.pi / 180.0)
  a, b, d, e = tf.cos(ang), tf.sin(ang), -tf.sin(ang), tf.cos(ang)
  return _affine(image, a, b, -a * cx - b * cy + cx, d, e, -d * cx - e * cy + cy)


def shear_x(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """timm shear_x: affine (1, factor, 0, 0, 1, 0)."""
  return _affine(image, 1.0, factor, 0.0, 0.0, 1.0, 0.0)


def shear_y(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """timm shear_y: affine (1, 0, 0, factor, 1, 0)."""
  return _affine(image, 1.0, 0.0, 0.0, factor, 1.0, 0.0)


def translate_x_rel(image: tf.Tensor, pct: tf.Tensor) -> tf.Tensor:
  """timm translate_x_rel: shift by pct * width pixels (content moves left for pct > 0)."""
  width = tf.cast(tf.shape(image)[1], tf.float64)
  return _affine(image, 1.0, 0.0, tf.cast(pct, tf.float64) * width, 0.0, 1.0, 0.0)


def translate_y_rel(image: tf.Tensor, pct: tf.Tensor) -> tf.Tensor:
  """timm translate_y_rel: shift by pct * height pixels (content moves up for pct > 0)."""
  height = tf.cast(tf.shape(image)[0], tf.float64)
  return _affine(image, 1.0, 0.0, 0.0, 0.0, 1.0, tf.cast(pct, tf.float64) * height)


_OPS: dict[str, Callable] = {
    'AutoContrast': auto_contrast, 'Equalize': equalize, 'Invert': invert, 'Rotate': rotate,
    'Posterize': posterize, 'PosterizeIncreasing': posterize, 'Solarize': solarize,
    'SolarizeIncreasing': solarize, 'SolarizeAdd': solarize_add, 'Color': color,
    'ColorIncreasing': color, 'Contrast': contrast, 'ContrastIncreasing': contrast,
    'Brightness': brightness, 'BrightnessIncreasing': brightness, 'Sharpness': sharpness,
    'SharpnessIncreasing': sharpness, 'ShearX': shear_x, 'ShearY': shear_y,
    'TranslateXRel': translate_x_rel, 'TranslateYRel': translate_y_rel,
}


def level_arg(name: str, magnitude, negate=False) -> tf.Tensor | None:
  """timm LEVEL_TO_ARG[name](magnitude) in float64 like Python, the random sign fixed (negate=True flips it)."""
  level_fn = LEVEL_TO_ARG[name]
  if level_fn is None:
    return None
  m = tf.cast(magnitude, tf.float64)
  s = tf.where(tf.cast(negate, tf.bool), tf.constant(-1.0, tf.float64), 1.0)
  arg = level_fn(m, s, tf)
  return tf.cast(arg, tf.int32) if name in INT_ARG_OPS else arg


def apply_op(image: tf.Tensor, name: str, magnitude, negate=False) -> tf.Tensor:
  """Applies one timm RandAugment op at a fixed magnitude (tests, visualisation); uint8 in and out."""
  if name not in _OPS:
    raise ValueError(f'Unknown RandAugment op {name!r}; known: {sorted(_OPS)}.')
  out = _OPS[name](image, level_arg(name, magnitude, negate))
  return tf.ensure_shape(out, image.shape)


# ----------------------------------------------------------------------------- RandAugment


def _choose_ops(seed: tf.Tensor, spec: RandAugmentSpec) -> tf.Tensor:
  """Op indices [n]: uniform with replacement, or weighted without replacement (Gumbel top-k) for w0."""
  num = len(spec.transforms)
  if spec.weight_idx is None:
    return tf.random.stateless_uniform([spec.num_layers], seed, 0, num, dtype=tf.int32)
  logw = tf.math.log(tf.constant(RAND_CHOICE_WEIGHTS_0, tf.float32))
  g = -tf.math.log(-tf.math.log(tf.random.stateless_uniform([num], seed, 1e-12, 1.0)))
  return tf.math.top_k(logw + g, spec.num_layers).indices


def rand_augment(image: tf.Tensor, seed: tf.Tensor, spec: str = 'rand-m9-mstd0.5-inc1') -> tf.Tensor:
  """timm RandAugment: n ops, each applied with p=0.5 at magnitude ~ N(m, mstd) clipped to [0, mmax]."""
  cfg = parse_rand_augment_spec(spec)
  if cfg.num_layers == 0:
    return image
  seed_choice, *layer_seeds = _split(seed, cfg.num_layers + 1)
  op_idx = tf.unstack(_choose_ops(seed_choice, cfg), num=cfg.num_layers)
  for idx, layer_seed in zip(op_idx, layer_seeds):
    s_apply, s_mag, s_sign = _split(layer_seed, 3)
    apply = tf.random.stateless_uniform([], s_apply, dtype=tf.float64) <= 0.5   # skip if rand > p
    mag = tf.constant(cfg.magnitude, tf.float64)
    if cfg.magnitude_std == math.inf:
      mag = tf.random.stateless_uniform([], s_mag, 0.0, cfg.magnitude, dtype=tf.float64)
    elif cfg.magnitude_std > 0:
      mag = mag + cfg.magnitude_std * tf.random.stateless_normal([], s_mag, dtype=tf.float64)
    mag = tf.clip_by_value(mag, 0.0, cfg.magnitude_max)
    negate = tf.random.stateless_uniform([], s_sign, dtype=tf.float64) > 0.5
    branches = [(lambda n=name, x=image, m=mag, neg=negate: apply_op(x, n, m, neg))
                for name in cfg.transforms]
    branches.append(lambda x=image: x)
    image = tf.switch_case(tf.where(apply, idx, len(cfg.transforms)), branches)
  return image


# ----------------------------------------------------------------------------- random erasing


def _erase_box(hw: tf.Tensor, seed: tf.Tensor, area_range, log_aspect, count: tf.Tensor):
  """timm RandomErasing box: ([top, left, h, w] float64, found) after up to 10 tries."""
  h, w = tf.unstack(tf.cast(hw, tf.float64))
  u = tf.random.stateless_uniform([4, 10], seed, dtype=tf.float64)
  target = (area_range[0] + (area_range[1] - area_range[0]) * u[0]) * h * w / count
  aspect = tf.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * u[1])
  bh, bw = tf.round(tf.sqrt(target * aspect)), tf.round(tf.sqrt(target / aspect))
  ok = (bw < w) & (bh < h)
  top = tf.minimum(tf.floor(u[2] * (h - bh + 1)), h - bh)
  left = tf.minimum(tf.floor(u[3] * (w - bw + 1)), w - bw)
  k = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
  return tf.stack([top[k], left[k], bh[k], bw[k]]), tf.reduce_any(ok)


def random_erasing(image: tf.Tensor, seed: tf.Tensor, prob: float = 0.25, mode: str = 'pixel',
                   min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3,
                   max_aspect: float | None = None, count: int = 1) -> tf.Tensor:
  """timm RandomErasing on a uint8 image, fill in pixel units: round(255 * (mean + std * z)), clipped.

  timm erases the normalised tensor with z ~ N(0, 1) per pixel ('pixel'), per box and channel
  ('rand') or z = 0 ('const'); here z is mapped back through ImageNet mean/std so that after
  `normalize` the box holds z up to uint8 rounding and clipping to [0, 255]. count > 1 draws
  randint(1, count) boxes of area / count each, as timm.
  """
  if mode not in ('pixel', 'rand', 'const'):
    raise ValueError(f"Unknown random erasing mode {mode!r}; use 'pixel', 'rand' or 'const'.")
  if prob <= 0:
    return image
  max_aspect = max_aspect or 1 / min_aspect
  log_aspect = (math.log(min_aspect), math.log(max_aspect))
  hw = tf.shape(image)[:2]
  s_apply, s_count, s_noise, *s_boxes = _split(seed, 3 + count)
  apply = tf.random.stateless_uniform([], s_apply, dtype=tf.float64) <= prob
  n = (tf.random.stateless_uniform([], s_count, 1, count + 1, dtype=tf.int32) if count > 1
       else tf.constant(1))
  yy, xx = tf.range(hw[0], dtype=tf.float64)[:, None], tf.range(hw[1], dtype=tf.float64)[None]
  mask = tf.zeros(hw, tf.bool)
  for i, s_box in enumerate(s_boxes):
    box, found = _erase_box(hw, s_box, (min_area, max_area), log_aspect, tf.cast(n, tf.float64))
    top, left, bh, bw = tf.unstack(box)
    inside = (yy >= top) & (yy < top + bh) & (xx >= left) & (xx < left + bw)
    mask |= inside & found & (i < n)

  def erase() -> tf.Tensor:
    noise_shape = {'pixel': tf.shape(image), 'rand': [1, 1, 3], 'const': [1, 1, 3]}[mode]
    z = tf.random.stateless_normal(noise_shape, s_noise) if mode != 'const' else tf.zeros([1, 1, 3])
    mean, std = tf.constant(IMAGENET_DEFAULT_MEAN), tf.constant(IMAGENET_DEFAULT_STD)
    fill = _to_uint8(255.0 * (mean + std * z))
    return tf.where(mask[..., None], tf.broadcast_to(fill, tf.shape(image)), image)

  return tf.cond(apply & tf.reduce_any(mask), erase, lambda: image)


# ----------------------------------------------------------------------------- entry points

def train_preprocess(data: tf.Tensor, seed: tf.Tensor, cfg: ml_collections.ConfigDict) -> tf.Tensor:
  """timm train transform (cfg: config.data, configs/common.py): random-resized crop, hflip, RandAugment, erasing -> uint8 [S, S, 3]."""
  s_crop, s_flip, s_ra, s_re = _split(seed, 4)
  image = decode_and_random_crop(data, s_crop, cfg.image_size, tuple(cfg.scale),
                                 tuple(cfg.ratio), cfg.interpolation)
  hflip = cfg.hflip
  if hflip > 0:
    flip = tf.random.stateless_uniform([], s_flip) < hflip
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
  if cfg.randaugment:
    image = rand_augment(image, s_ra, cfg.randaugment)
  if cfg.reprob > 0:
    image = random_erasing(image, s_re, cfg.reprob, cfg.remode,
                           count=cfg.recount)
  return tf.ensure_shape(image, [cfg.image_size, cfg.image_size, 3])


def train_preprocess_for_device(data: tf.Tensor, seed: tf.Tensor, cfg: ml_collections.ConfigDict,
                                canvas: int) -> dict[str, tf.Tensor]:
  """The host half of train_preprocess when the device finishes it (lkd_jax/data/device_augment.py).

  Returns 'image': the decoded random-resized-crop window (train_preprocess's window for this seed)
  unresized when both sides fit `canvas`, else already resized to S x S here (rare: only crops of
  large photos; the device's resize of an S x S crop is the identity); 'crop_hw': its int32 [h, w];
  'aug_seed': uint32 [2], the example's seed for the device's flip, RandAugment and erasing.
  """
  s_crop, s_device, _, _ = _split(seed, 4)
  crop, _ = _decode_crop(data, lambda hw: rrc_window(hw, s_crop, tuple(cfg.scale), tuple(cfg.ratio)))
  fits = tf.reduce_all(tf.shape(crop)[:2] <= canvas)
  image = tf.cond(fits, lambda: crop, lambda: _resize(crop, cfg.image_size, cfg.interpolation))
  image = tf.ensure_shape(image, [None, None, 3])
  aug_seed = tf.random.stateless_uniform([2], s_device, minval=None, maxval=None, dtype=tf.uint32)
  return {'image': image, 'crop_hw': tf.shape(image)[:2], 'aug_seed': aug_seed}


def eval_preprocess(data: tf.Tensor, cfg: ml_collections.ConfigDict) -> tf.Tensor:
  """timm eval transform: shorter side to image_size / crop_pct, centre crop -> uint8 [S, S, 3]."""
  return decode_and_center_crop(data, cfg.image_size, cfg.crop_pct,
                                cfg.interpolation)
