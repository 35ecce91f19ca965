"""Embedded dataset "glyph pairs": procedural, deterministic per seed, no files, 10 classes.

The rule. Each RGB image (default 64x64) holds two *white* glyphs, A in the left third and B in
the right third of the image (about half the image apart horizontally), each one of 5 shapes
(0 square ring, 1 plus, 2 X, 3 diamond, 4 two bars), at independent random heights that differ by
at least 4 pixels. The label names the *higher* of the two glyphs: its side and its shape,

    label = shape(A)       if A is higher than B
          = 5 + shape(B)   otherwise

so it depends on the relation between two distant parts of the image: neither glyph alone
determines it, since which glyph counts is decided by comparing their heights across at least half
the image. Clutter makes it non-trivial: a smooth random colour gradient, pixel noise, 4 coloured
(never white) glyphs of the same shapes and 3 coloured line segments at random places.

Example i of split s under seed k is drawn from numpy's PCG64 seeded with (k, s, i), so any example
can be regenerated alone, and batches come in a fixed order per (seed, step): a resumed run sees
exactly the batches an uninterrupted run would. Augmentation: a random translation of up to
`shift` pixels with zero fill (the label is invariant to it; flips are not label-preserving here).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

NUM_CLASSES = 10
NUM_SHAPES = 5
GLYPH = 9
SPLITS = {'train': 0, 'validation': 1}


def _glyphs() -> np.ndarray:
  """The 5 binary 9x9 shapes."""
  g = np.zeros((NUM_SHAPES, GLYPH, GLYPH), bool)
  r = np.arange(GLYPH)
  g[0, [0, -1], :] = g[0, :, [0, -1]] = True                     # square ring
  g[1, GLYPH // 2 - 1:GLYPH // 2 + 2, :] = True                   # plus
  g[1, :, GLYPH // 2 - 1:GLYPH // 2 + 2] = True
  g[2, r, r] = g[2, r, r[::-1]] = True                            # X
  g[2, r[1:], r[:-1]] = g[2, r[1:], r[::-1][:-1]] = True
  yy, xx = np.mgrid[:GLYPH, :GLYPH]
  g[3] = np.abs(yy - GLYPH // 2) + np.abs(xx - GLYPH // 2) <= GLYPH // 2   # diamond
  g[4, :, [1, 2, 6, 7]] = True                                    # two bars
  return g


GLYPHS = _glyphs()


def label_of(shape_a: int, shape_b: int, a_higher: bool) -> int:
  """The documented rule."""
  return shape_a if a_higher else NUM_SHAPES + shape_b


def _stamp(img: np.ndarray, shape: int, y: int, x: int, colour: np.ndarray) -> None:
  region = img[y:y + GLYPH, x:x + GLYPH]
  mask = GLYPHS[shape][:region.shape[0], :region.shape[1]]
  region[mask] = colour


def _line(img: np.ndarray, rng: np.random.Generator, colour: np.ndarray) -> None:
  size = img.shape[0]
  p0, p1 = rng.integers(0, size, 2), rng.integers(0, size, 2)
  t = np.linspace(0.0, 1.0, 2 * size)
  ys = np.round(p0[0] + t * (p1[0] - p0[0])).astype(int)
  xs = np.round(p0[1] + t * (p1[1] - p0[1])).astype(int)
  img[ys, xs] = colour


def _clutter_colour(rng: np.random.Generator) -> np.ndarray:
  c = rng.integers(40, 256, 3)
  c[rng.integers(3)] = rng.integers(0, 90)  # one dark channel: never white
  return c


def example(seed: int, split: str, index: int, size: int = 64) -> tuple[np.ndarray, int, dict]:
  """Image (size, size, 3) uint8, label, and the latent factors of example `index`."""
  rng = np.random.Generator(np.random.PCG64([seed, SPLITS[split], index]))
  yy, xx = np.mgrid[:size, :size] / size
  c0, c1, c2 = rng.uniform(0, 110, (3, 3))
  img = c0 + np.multiply.outer(yy, c1 - c0) + np.multiply.outer(xx, c2 - c0)
  img = img + rng.normal(0, 12, img.shape)
  img = np.clip(img, 0, 150).astype(np.uint8)
  for _ in range(3):
    _line(img, rng, _clutter_colour(rng))
  for _ in range(4):
    y, x = rng.integers(0, size - GLYPH, 2)
    _stamp(img, int(rng.integers(NUM_SHAPES)), int(y), int(x), _clutter_colour(rng))
  shape_a, shape_b = (int(s) for s in rng.integers(NUM_SHAPES, size=2))
  third = size // 3
  xa = int(rng.integers(0, third - GLYPH + 1))
  xb = int(rng.integers(size - third, size - GLYPH + 1))
  while True:
    ya, yb = (int(v) for v in rng.integers(0, size - GLYPH + 1, 2))
    if abs(ya - yb) >= 4:
      break
  for s, y, x in ((shape_a, ya, xa), (shape_b, yb, xb)):
    _stamp(img, s, y, x, rng.integers(225, 256, 3))
  factors = dict(shape_a=shape_a, shape_b=shape_b, ya=ya, yb=yb, xa=xa, xb=xb)
  return img, label_of(shape_a, shape_b, ya < yb), factors


def make_split(seed: int, split: str, num_examples: int, size: int = 64
               ) -> tuple[np.ndarray, np.ndarray]:
  """All examples of a split as (images uint8 NHWC, labels int32)."""
  images = np.empty((num_examples, size, size, 3), np.uint8)
  labels = np.empty((num_examples,), np.int32)
  for i in range(num_examples):
    images[i], labels[i], _ = example(seed, split, i, size)
  return images, labels


def _translate(images: np.ndarray, rng: np.random.Generator, shift: int) -> np.ndarray:
  if shift <= 0:
    return images
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
  dy, dx = rng.integers(0, 2 * shift + 1, (2, n))
  return np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def train_batches(images: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int,
                  start_step: int = 0, shift: int = 4, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches for steps start_step, start_step+1, ...; this process's slice of each global batch."""
  n = len(labels)
  per_epoch = n // batch_size
  local = batch_size // process_count
  step = start_step
  while True:
    epoch, pos = divmod(step, per_epoch)
    order = np.random.Generator(np.random.PCG64([seed, 7, epoch])).permutation(n)
    idx = order[pos * batch_size:(pos + 1) * batch_size]
    idx = idx[process_index * local:(process_index + 1) * local]
    aug_rng = np.random.Generator(np.random.PCG64([seed, 8, step, process_index]))
    yield {'image': _translate(images[idx], aug_rng, shift), 'label': labels[idx]}
    step += 1


def eval_batches(images: np.ndarray, labels: np.ndarray, *, batch_size: int,
                 process_index: int = 0, process_count: int = 1
                 ) -> Iterator[dict[str, np.ndarray]]:
  """One pass in order; the last batch is zero-padded with mask=False so every example counts once."""
  shard = np.array_split(np.arange(len(labels)), process_count)
  local = batch_size // process_count
  steps = -(-max(len(s) for s in shard) // local)
  mine = shard[process_index]
  for s in range(steps):
    idx = mine[s * local:(s + 1) * local]
    pad = local - len(idx)
    img = np.concatenate([images[idx], np.zeros((pad,) + images.shape[1:], images.dtype)])
    lab = np.concatenate([labels[idx], np.zeros((pad,), labels.dtype)])
    mask = np.concatenate([np.ones(len(idx), bool), np.zeros(pad, bool)])
    yield {'image': img, 'label': lab, 'mask': mask}
