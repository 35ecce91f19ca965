"""The evaluation sets: which TFDS builder and split each reads, its label features and metric.

| key | TFDS builder (split) | metric |
|---|---|---|
| imagenet | imagenet2012 (validation) | top-1, top-5, NLL, ECE |
| imagenet_v2 | imagenet_v2/<variant> (test); matched-frequency by default | top-1, top-5 |
| imagenet_real | imagenet2012_real (validation) | ReaL top-1 over images with a non-empty label set |
| imagenet_a | imagenet_a (test) | top-1 with logits restricted to classes.IMAGENET_A |
| imagenet_r | imagenet_r (test) | top-1 with logits restricted to classes.IMAGENET_R |
| imagenet_sketch | imagenet_sketch (test) | top-1, top-5 |
| imagenet_c | imagenet2012_corrupted/<corruption>_<severity> (validation) | top-1 error, mCE, mean error |
| synthetic | the embedded task's validation split (lkd_jax/data/synthetic.py) | as imagenet |
| synthetic_c | the same under corruptions.NAMES x severities 1-5 | as imagenet_c |

imagenet2012_corrupted stores 224 px centre crops already (TFDS resizes to 256 and crops 224), so
its default crop_pct is 1.0: at image size 224 the eval transform leaves it as stored, as
Hendrycks' ImageNet-C evaluation does (CenterCrop(224) only).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

from lkd_jax.errors import SetupError
from lkd_jax.evaluate import classes, corruptions, metrics

V2_VARIANTS = ('matched-frequency', 'threshold-0.7', 'topimages')
TFDS_SETS = ('imagenet', 'imagenet_v2', 'imagenet_real', 'imagenet_a', 'imagenet_r',
             'imagenet_sketch', 'imagenet_c')
EMBEDDED_SETS = ('synthetic', 'synthetic_c')
CORRUPTED = ('imagenet_c', 'synthetic_c')


class EvalSet(NamedTuple):
  """One pass over one dataset (a corrupted suite is one EvalSet per corruption and severity)."""
  key: str                 # 'imagenet', 'imagenet_c/contrast/3', 'synthetic_c/pixelate/1', ...
  group: str               # the suite name it came from: 'imagenet_c', 'synthetic', ...
  builder: str = ''        # TFDS name[/config]; '' for the embedded task
  split: str = ''
  classes: tuple[int, ...] | None = None  # restrict the argmax to these classes
  real: bool = False       # read the ReaL label sets
  corruption: str = ''
  severity: int = 0
  crop_pct: float | None = None  # overrides the eval transform's crop_pct


def _single(key: str, v2_variant: str) -> EvalSet:
  if key == 'imagenet':
    return EvalSet(key, key, 'imagenet2012', 'validation')
  if key == 'imagenet_v2':
    if v2_variant not in V2_VARIANTS:
      raise SetupError(f'imagenet_v2 variant {v2_variant!r} is not one of {", ".join(V2_VARIANTS)}.')
    return EvalSet(key, key, f'imagenet_v2/{v2_variant}', 'test')
  if key == 'imagenet_real':
    return EvalSet(key, key, 'imagenet2012_real', 'validation', real=True)
  if key == 'imagenet_a':
    return EvalSet(key, key, 'imagenet_a', 'test', classes=classes.IMAGENET_A)
  if key == 'imagenet_r':
    return EvalSet(key, key, 'imagenet_r', 'test', classes=classes.IMAGENET_R)
  if key == 'imagenet_sketch':
    return EvalSet(key, key, 'imagenet_sketch', 'test')
  return EvalSet(key, key)  # synthetic


def _corrupted(group: str, names: Sequence[str], severities: Sequence[int]) -> list[EvalSet]:
  out = []
  for name in names:
    for s in severities:
      key = f'{group}/{name}/{s}'
      if group == 'imagenet_c':
        out.append(EvalSet(key, group, f'imagenet2012_corrupted/{name}_{s}', 'validation',
                           corruption=name, severity=s, crop_pct=1.0))
      else:
        out.append(EvalSet(key, group, corruption=name, severity=s))
  return out


def default_corruptions(group: str, extra: bool = False) -> tuple[str, ...]:
  """The corruptions a suite runs unless told: ImageNet-C's 15 (+ the 4 extra), or the embedded 5."""
  if group == 'imagenet_c':
    return metrics.CORRUPTIONS + (metrics.EXTRA_CORRUPTIONS if extra else ())
  return corruptions.NAMES


def expand(suite: Sequence[str], *, corruption_names: Sequence[str] = (),
           severities: Sequence[int] = (1, 2, 3, 4, 5), extra_corruptions: bool = False,
           v2_variant: str = 'matched-frequency') -> list[EvalSet]:
  """The EvalSets of suite names; `corruption_names` (default: all) subsets the corrupted suites."""
  known = TFDS_SETS + EMBEDDED_SETS
  out = []
  for key in suite:
    if key not in known:
      raise SetupError(f'Unknown evaluation set {key!r}; known: {", ".join(known)}.')
    if key not in CORRUPTED:
      out.append(_single(key, v2_variant))
      continue
    allowed = default_corruptions(key, extra=True)
    names = tuple(corruption_names) or default_corruptions(key, extra_corruptions)
    bad = [n for n in names if n not in allowed]
    if bad:
      raise SetupError(f'{key} has no corruption {", ".join(bad)}; its corruptions: '
                       f'{", ".join(allowed)}.')
    if not set(severities) <= set(corruptions.SEVERITIES):
      raise SetupError(f'Severities must be among {corruptions.SEVERITIES}, got {tuple(severities)}.')
    out += _corrupted(key, names, severities)
  return out
