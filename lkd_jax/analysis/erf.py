"""Effective receptive field by the method of RepLKNet's erf/ scripts (copied into the SLaK repo).

Per image: resize without cropping to S x S (bicubic), scale to [0, 1], normalise with the ImageNet
mean/std; score = sum over channels of ReLU(M[h // 2, w // 2, :]), M = the model's last-stage map
before pooling and the final norm (`feats['stage4']`), eval mode; the image's map is the gradient of
the score w.r.t. the normalised input, ReLU'd, summed over RGB. The ERF is the mean map over images
(an image whose map holds a NaN is skipped and counted).

Analysis (`high_contribution_area`): A = log10(map + 1) / max; for each threshold t the smallest
square of side 2i + 1 (i = 1 .. S // 2 - 1) centred at (S // 2, S // 2) whose share of the sum of A
is strictly greater than t. The area ratio is (side / S)^2; the SLaK copy divides the side by a
hard-coded 1024, which is the same only at S = 1024.
"""
from __future__ import annotations

import functools
import itertools
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from lkd_jax import sharding
from lkd_jax import step as step_lib
from lkd_jax.errors import SetupError
from lkd_jax.kernels import xla_options

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
FEATURE = 'stage4'
LOG_EVERY_S = 5.0  # progress lines at most this often (and after the first and the last batch)


class ErfResult(NamedTuple):
  """The mean ERF map over the images used (float32, S x S) and the image counts."""
  erf_map: np.ndarray
  used: int
  skipped: int


# ---------------------------------------------------------------------------------------- images

def resize(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 HWC (any size, RGB) -> uint8 size x size x 3, bicubic without cropping (as torchvision's
  Resize((S, S), BICUBIC) does on a PIL image)."""
  return np.asarray(Image.fromarray(image).convert('RGB').resize((size, size), Image.BICUBIC))


def folder_files(folder: str) -> list[str]:
  """The JPEG/PNG files under `folder`, sorted by path."""
  files = [os.path.join(root, f) for root, _, names in os.walk(folder) for f in names
           if f.lower().endswith(IMAGE_SUFFIXES)]
  return sorted(files)


def _folder_images(folder: str) -> Iterator[np.ndarray]:
  for path in folder_files(folder):
    with Image.open(path) as img:
      yield np.asarray(img.convert('RGB'))


def _synthetic_images(split: str) -> Iterator[np.ndarray]:
  from lkd_jax.data import synthetic
  if split not in synthetic.SPLITS:
    raise SetupError(f'synthetic:{split}: the embedded task has splits {", ".join(synthetic.SPLITS)}.')
  return (synthetic.example(0, split, i)[0] for i in itertools.count())


def _tfds_images(name: str, split: str, num: int, data_dir: str | None
                 ) -> tuple[Iterator[np.ndarray], int]:
  import tensorflow_datasets as tfds
  from lkd_jax.data import hide_accelerators_from_tf
  hide_accelerators_from_tf()
  try:
    ds = tfds.load(name, split=f'{split}[:{num}]', data_dir=data_dir, shuffle_files=False)
  except Exception as e:  # noqa: BLE001  not found, not prepared, no such split: one line, the fix in it
    raise SetupError(f'tfds:{name}:{split}: {e}'.splitlines()[0]) from None
  count = int(ds.cardinality())  # negative when unknown
  return (ex['image'] for ex in tfds.as_numpy(ds)), (min(num, count) if count >= 0 else num)


def image_source(spec: str, num: int, data_dir: str | None = None
                 ) -> tuple[Iterator[np.ndarray], int]:
  """The first `num` images of `spec` (uint8 HWC, any size) and how many there will be.

  `spec`: a folder of JPEG/PNG files; `tfds:NAME[:SPLIT]` (default split validation); or
  `synthetic[:SPLIT]`, the embedded task (lkd_jax/data/synthetic.py, seed 0, default validation).
  """
  kind, _, rest = spec.partition(':')
  if kind == 'synthetic':
    images = _synthetic_images(rest or 'validation')
  elif kind == 'tfds':
    name, _, split = rest.partition(':')
    if not name:
      raise SetupError(f'{spec}: want tfds:NAME[:SPLIT], e.g. tfds:imagenet2012:validation.')
    images, num = _tfds_images(name, split or 'validation', num, data_dir)
  elif os.path.isdir(spec):
    count = len(folder_files(spec))
    if not count:
      raise SetupError(f'{spec} holds no {"/".join(IMAGE_SUFFIXES)} files.')
    num = min(num, count)
    images = _folder_images(spec)
  else:
    raise SetupError(f'Images {spec!r}: not a folder; want a folder of JPEG/PNG files, '
                     'tfds:NAME[:SPLIT] or synthetic[:SPLIT].')
  return (img for _, img in zip(range(num), images)), num


# ----------------------------------------------------------------------------------- computation

def central_score(feature_map: jax.Array) -> jax.Array:
  """Sum over the batch and channels of ReLU(M[:, h // 2, w // 2, :]) of an NHWC map M."""
  _, h, w, _ = feature_map.shape
  return jnp.sum(jax.nn.relu(feature_map[:, h // 2, w // 2, :].astype(jnp.float32)))


def input_grad_maps(graph: Any, state: Any, images: jax.Array) -> jax.Array:
  """(N, S, S) contribution maps: ReLU of d score / d normalised input, summed over RGB.

  One score per image summed over the batch: in eval mode an image's score depends on it alone, so
  the gradient of the sum is every image's own gradient.
  """
  def score(x):
    _, feats = nnx.merge(graph, state)(x, train=False)
    return central_score(feats[FEATURE])
  grad = jax.grad(score)(step_lib.normalize(images))
  return jnp.sum(jax.nn.relu(grad), axis=-1)


def batch_erf(graph: Any, state: Any, images: jax.Array, mask: jax.Array
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(sum of the maps of the images used, images used, images skipped for a NaN) of one batch;
  `mask` is False on padding."""
  maps = input_grad_maps(graph, state, images)
  nan = jnp.isnan(jnp.sum(maps, axis=(1, 2)))  # the reference tests np.isnan(np.sum(map))
  used = mask & ~nan
  total = jnp.sum(jnp.where(used[:, None, None], maps, 0.0), axis=0)
  return total, jnp.sum(used), jnp.sum(mask & nan)


def compiled_batch_erf(graph: Any, mesh: jax.sharding.Mesh) -> Callable:
  """`batch_erf` for `graph`, jitted with the batch sharded over the mesh's 'data' axis."""
  repl, batch = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  return xla_options.jit(functools.partial(batch_erf, graph), in_shardings=(repl, batch, batch),
                         out_shardings=repl)


def _batches(images: Iterable[np.ndarray], size: int, batch_size: int
             ) -> Iterator[dict[str, np.ndarray]]:
  """Resized images in batches of `batch_size`, the last one zero-padded with mask False."""
  buf = []
  for img in images:
    buf.append(resize(img, size))
    if len(buf) == batch_size:
      yield {'image': np.stack(buf), 'mask': np.ones(batch_size, bool)}
      buf = []
  if buf:
    n = len(buf)
    buf += [np.zeros_like(buf[0])] * (batch_size - n)
    yield {'image': np.stack(buf), 'mask': np.arange(batch_size) < n}


def _progress(done: int, total: int, skipped: int, t0: float, t_first: float, first_done: int
              ) -> str:
  """One progress line; the rate counts the batches after the first, which includes compilation."""
  now = time.perf_counter()
  if done == first_done:
    return (f'erf: {done}/{total} images ({skipped} skipped); the first batch, compilation included, '
            f'took {now - t0:.1f} s')
  rate = (done - first_done) / max(now - t_first, 1e-9)
  return (f'erf: {done}/{total} images ({skipped} skipped), {rate:.2f} img/s, '
          f'ETA {(total - done) / rate:.0f} s, elapsed {now - t0:.0f} s')


def compute(model: nnx.Module, images: Iterable[np.ndarray], num: int, size: int = 1024, *,
            batch_size: int | None = None, mesh: jax.sharding.Mesh | None = None,
            log: Callable[[str], None] | None = None) -> ErfResult:
  """The mean ERF map of `model` over `num` images (uint8 HWC, any size) resized to `size`.

  `batch_size` (default: one image per device) must be a multiple of the mesh's device count;
  `log` receives progress lines (images/s, ETA; default: stderr). The reference reads on past a
  NaN image until `num` are used; here the first `num` images are read and the NaN ones counted.
  """
  mesh = mesh or sharding.make_mesh()
  batch_size = batch_size or mesh.devices.size
  sharding.check_batch_size(batch_size, mesh, 'batch_size')
  log = log or (lambda line: print(line, file=sys.stderr, flush=True))
  graph, state = nnx.split(model)
  state = sharding.put_replicated(state, mesh)
  fn = compiled_batch_erf(graph, mesh)
  total = np.zeros((size, size), np.float64)
  used = skipped = done = 0
  t0 = t_first = t_log = time.perf_counter()
  first_done = 0
  for batch in _batches(images, size, batch_size):
    arrays = sharding.global_batch(batch, mesh)
    map_sum, n_used, n_skipped = jax.device_get(fn(state, arrays['image'], arrays['mask']))
    total += map_sum
    used, skipped = used + int(n_used), skipped + int(n_skipped)
    done += int(batch['mask'].sum())
    now = time.perf_counter()
    if first_done == 0:
      t_first, first_done = now, done
    if done in (first_done, num) or now - t_log >= LOG_EVERY_S:
      log(_progress(done, num, skipped, t0, t_first, first_done))
      t_log = now
  if used == 0:
    raise SetupError(f'No ERF: none of the {done} images gave a finite map ({skipped} had a NaN).')
  return ErfResult((total / used).astype(np.float32), used, skipped)


# -------------------------------------------------------------------------------------- analysis

def normalise(erf_map: np.ndarray) -> np.ndarray:
  """log10(map + 1) / its max, in float64 (an all-zero map stays zero)."""
  a = np.log10(np.asarray(erf_map, np.float64) + 1.0)
  peak = a.max()
  return a / peak if peak > 0 else a


def square_sums(a: np.ndarray) -> np.ndarray:
  """Sums of `a` over the squares of side 2i + 1 centred at (S // 2, S // 2), i = 1 .. S // 2 - 1."""
  s = a.shape[0]
  if a.shape != (s, s):
    raise ValueError(f'want a square map, got shape {a.shape}')
  c = s // 2
  return np.array([a[c - i:c + i + 1, c - i:c + i + 1].sum() for i in range(1, s // 2)])


def smallest_square(a: np.ndarray, t: float, sums: np.ndarray | None = None) -> int | None:
  """Side of the smallest centred square whose share of sum(a) is strictly greater than t, or None."""
  sums = square_sums(a) if sums is None else sums
  total = a.sum()
  if not total > 0:
    return None
  above = np.nonzero(sums / total > t)[0]  # the reference's test: area_sum / all_sum > thresh
  return 2 * int(above[0]) + 3 if above.size else None


def high_contribution_area(erf_map: np.ndarray, thresholds: Iterable[float] = THRESHOLDS
                           ) -> list[dict[str, Any]]:
  """For each threshold: the square's side and area ratio (side / S)^2 on the normalised map (None
  for both where no square qualifies)."""
  a = normalise(erf_map)
  sums = square_sums(a)
  rows = []
  for t in thresholds:
    side = smallest_square(a, t, sums)
    rows.append({'threshold': t, 'side': side,
                 'area_ratio': None if side is None else (side / a.shape[0]) ** 2})
  return rows


def format_areas(rows: list[dict[str, Any]]) -> str:
  """'t=0.2: 1.23%, ...' (area ratios in %; 'none' where no square qualifies)."""
  fmt = lambda r: 'none' if r['area_ratio'] is None else f"{100 * r['area_ratio']:.2f}%"
  return ', '.join(f"t={r['threshold']:g}: {fmt(r)}" for r in rows)
