"""The embedded task's corruption suite: deterministic ImageNet-C-style corruptions of uint8 images.

Five corruptions at severities 1-5 with Hendrycks & Dietterich's ImageNet-C parameters
(hendrycks/robustness ImageNet-C/create_c/make_imagenet_c.py): gaussian_noise (std c on [0, 1]
pixels), gaussian_blur (sigma c, scaled by size / 224 so that a 64 px glyph image is blurred as much,
relative to its size, as a 224 px photograph), contrast (blend towards the per-image mean by factor
c), jpeg_compression (quality c, PIL) and pixelate (box-downscale by factor c, box-upscale back).
Noise is drawn from PCG64 seeded with (seed, corruption, severity), so a split corrupts the same way
on every run and process.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

SEVERITIES = (1, 2, 3, 4, 5)
PARAMS = {
    'gaussian_noise': (0.08, 0.12, 0.18, 0.26, 0.38),
    'gaussian_blur': (1, 2, 3, 4, 6),
    'contrast': (0.4, 0.3, 0.2, 0.1, 0.05),
    'jpeg_compression': (25, 18, 15, 10, 7),
    'pixelate': (0.6, 0.5, 0.4, 0.3, 0.25),
}
NAMES = tuple(PARAMS)


def _gaussian_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
  return x / 255.0 + rng.normal(0.0, c, x.shape)


def _gaussian_blur(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
  sigma = c * x.shape[1] / 224
  return ndimage.gaussian_filter(x / 255.0, sigma=(0, sigma, sigma, 0), mode='reflect')


def _contrast(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
  x = x / 255.0
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  return (x - mean) * c + mean


def _per_image(fn):
  return lambda x, c, rng: np.stack([np.asarray(fn(Image.fromarray(im), c)) for im in x]) / 255.0


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
  buf = io.BytesIO()
  im.save(buf, 'JPEG', quality=quality)
  return Image.open(buf).convert('RGB')


def _pixelate(im: Image.Image, c: float) -> Image.Image:
  w, h = im.size
  small = im.resize((max(1, int(w * c)), max(1, int(h * c))), Image.BOX)
  return small.resize((w, h), Image.BOX)


_FNS = {'gaussian_noise': _gaussian_noise, 'gaussian_blur': _gaussian_blur, 'contrast': _contrast,
        'jpeg_compression': _per_image(_jpeg), 'pixelate': _per_image(_pixelate)}


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
  """`images` (uint8 NHWC) under corruption `name` at `severity` (1-5); deterministic per seed."""
  if name not in PARAMS:
    raise ValueError(f'Unknown corruption {name!r}; known: {", ".join(NAMES)}.')
  if severity not in SEVERITIES:
    raise ValueError(f'Severity {severity} is not one of {SEVERITIES}.')
  rng = np.random.Generator(np.random.PCG64([seed, NAMES.index(name), severity]))
  out = _FNS[name](images, PARAMS[name][severity - 1], rng)
  return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
