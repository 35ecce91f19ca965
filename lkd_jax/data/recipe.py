"""The timm augmentation recipe's constants, RandAugment spec and level formulas, free of any backend.

Shared by the TensorFlow host ops (augment.py) and their JAX twins on the device (device_ops.py,
device_augment.py), so both read one definition. Sources: timm `data/constants.py`,
`data/auto_augment.py` (`_LEVEL_DENOM`, `_RAND_TRANSFORMS`, `_RAND_INCREASING_TRANSFORMS`,
`_RAND_CHOICE_WEIGHTS_0`, `LEVEL_TO_ARG`, `rand_augment_transform`).
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, NamedTuple

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)   # timm data/constants.py
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
FILL = (124, 116, 104)                          # timm aa_params img_mean: round(255 * mean)
LEVEL_DENOM = 10.0                              # timm auto_augment._LEVEL_DENOM
KERNELS = {'bilinear': ('triangle', 1.0), 'bicubic': ('keyscubic', 2.0),   # name -> (TF kernel,
           'lanczos3': ('lanczos3', 3.0), 'lanczos5': ('lanczos5', 5.0)}   # radius in pixels)

# timm auto_augment._RAND_TRANSFORMS / _RAND_INCREASING_TRANSFORMS (same positions) and
# _RAND_CHOICE_WEIGHTS_0 in that order (spec key 'w0').
RAND_TRANSFORMS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize',
                   'SolarizeAdd', 'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY',
                   'TranslateXRel', 'TranslateYRel')
RAND_INCREASING_TRANSFORMS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
                              'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing',
                              'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing',
                              'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
RAND_CHOICE_WEIGHTS_0 = (0.025, 0.005, 0.0, 0.3, 0.0, 0.005, 0.005, 0.025, 0.005, 0.005, 0.025,
                         0.2, 0.2, 0.1, 0.1)


def kernel(method: str) -> tuple[str, float]:
  """TF scale_and_translate kernel name and its radius for an interpolation name."""
  if method not in KERNELS:
    raise ValueError(f'Unknown interpolation {method!r}; use one of {sorted(KERNELS)}.')
  return KERNELS[method]


# ----------------------------------------------------------------------------- level formulas
# timm LEVEL_TO_ARG: magnitude m in [0, mmax], sign s in {-1, +1} (timm `_randomly_negate`), `xp` the
# array namespace (tensorflow or jax.numpy: both spell floor and maximum alike). int() of a
# non-negative level is floor().

def _enhance(m, s, xp):
  """timm _enhance_level_to_arg: factor in [0.1, 1.9], no sign."""
  return m / LEVEL_DENOM * 1.8 + 0.1


def _enhance_inc(m, s, xp):
  """timm _enhance_increasing_level_to_arg: max(0.1, 1 +- 0.9 m / 10)."""
  return xp.maximum(1.0 + s * (m / LEVEL_DENOM * 0.9), 0.1)


LEVEL_TO_ARG: dict[str, Callable[[Any, Any, Any], Any] | None] = {
    'AutoContrast': None,
    'Equalize': None,
    'Invert': None,
    'Rotate': lambda m, s, xp: s * (m / LEVEL_DENOM * 30.0),
    'Posterize': lambda m, s, xp: xp.floor(m / LEVEL_DENOM * 4),
    'PosterizeIncreasing': lambda m, s, xp: 4 - xp.floor(m / LEVEL_DENOM * 4),
    'Solarize': lambda m, s, xp: xp.floor(m / LEVEL_DENOM * 256),
    'SolarizeIncreasing': lambda m, s, xp: 256 - xp.floor(m / LEVEL_DENOM * 256),
    'SolarizeAdd': lambda m, s, xp: xp.floor(m / LEVEL_DENOM * 110),
    'Color': _enhance,
    'ColorIncreasing': _enhance_inc,
    'Contrast': _enhance,
    'ContrastIncreasing': _enhance_inc,
    'Brightness': _enhance,
    'BrightnessIncreasing': _enhance_inc,
    'Sharpness': _enhance,
    'SharpnessIncreasing': _enhance_inc,
    'ShearX': lambda m, s, xp: s * (m / LEVEL_DENOM * 0.3),
    'ShearY': lambda m, s, xp: s * (m / LEVEL_DENOM * 0.3),
    'TranslateXRel': lambda m, s, xp: s * (m / LEVEL_DENOM * 0.45),
    'TranslateYRel': lambda m, s, xp: s * (m / LEVEL_DENOM * 0.45),
}
INT_ARG_OPS = ('Posterize', 'PosterizeIncreasing', 'Solarize', 'SolarizeIncreasing', 'SolarizeAdd')


# ----------------------------------------------------------------------------- RandAugment spec


class RandAugmentSpec(NamedTuple):
  """Parsed timm RandAugment config string (defaults as in timm rand_augment_transform)."""
  num_layers: int = 2
  magnitude: float = 10.0
  magnitude_std: float = 0.0
  magnitude_max: float = LEVEL_DENOM
  transforms: tuple[str, ...] = RAND_TRANSFORMS
  weight_idx: int | None = None


def parse_rand_augment_spec(spec: str) -> RandAugmentSpec:
  """'rand-m9-n2-mstd0.5-mmax10-inc1-w0' -> RandAugmentSpec; ValueError names the bad part."""
  parts = spec.split('-')
  if parts[0] != 'rand':
    raise ValueError(f"RandAugment spec {spec!r} must start with 'rand', got {parts[0]!r}.")
  out = RandAugmentSpec()
  for part in parts[1:]:
    match = re.fullmatch(r'([A-Za-z_]*)(\d.*)', part)
    key, val = match.groups() if match else (part, '')
    try:
      if not match:
        raise ValueError
      if key == 'm':
        out = out._replace(magnitude=float(int(val)))
      elif key == 'n':
        out = out._replace(num_layers=int(val))
      elif key == 'mstd':
        mstd = float(val)
        out = out._replace(magnitude_std=math.inf if mstd > 100 else mstd)
      elif key == 'mmax':
        out = out._replace(magnitude_max=float(int(val)) or LEVEL_DENOM)
      elif key == 'inc':
        out = out._replace(transforms=RAND_INCREASING_TRANSFORMS if int(val) else RAND_TRANSFORMS)
      elif key == 'w':
        if int(val) != 0:
          raise ValueError
        out = out._replace(weight_idx=0)
      else:
        raise ValueError
    except ValueError:
      raise ValueError(f'Bad RandAugment spec part {part!r} in {spec!r}: expected m<int>, n<int>, '
                       'mstd<float>, mmax<int>, inc<0|1> or w0.') from None
  if out.num_layers < 0 or out.magnitude_std < 0:
    raise ValueError(f'Bad RandAugment spec {spec!r}: n and mstd must be >= 0.')
  if out.weight_idx is not None and out.num_layers > sum(w > 0 for w in RAND_CHOICE_WEIGHTS_0):
    raise ValueError(f'Bad RandAugment spec {spec!r}: w0 samples without replacement, n too large.')
  return out
