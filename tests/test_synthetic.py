"""The embedded glyph-pairs dataset: deterministic per seed and obeying its documented rule."""
import numpy as np

from lkd_jax.data import synthetic


def test_deterministic_per_seed():
  a, la = synthetic.make_split(3, 'train', 20)
  b, lb = synthetic.make_split(3, 'train', 20)
  c, _ = synthetic.make_split(4, 'train', 20)
  v, _ = synthetic.make_split(3, 'validation', 20)
  assert np.array_equal(a, b) and np.array_equal(la, lb)
  assert not np.array_equal(a, c) and not np.array_equal(a, v)
  assert a.shape == (20, 64, 64, 3) and a.dtype == np.uint8


def test_rule_holds_and_only_the_two_glyphs_are_white():
  for i in range(200):
    img, label, f = synthetic.example(0, 'train', i)
    assert label == (f['shape_a'] if f['ya'] < f['yb'] else 5 + f['shape_b'])
    assert f['xa'] + synthetic.GLYPH <= 64 // 3 and f['xb'] >= 64 - 64 // 3
    assert abs(f['ya'] - f['yb']) >= 4
    expected = np.zeros((64, 64), bool)
    for s, y, x in ((f['shape_a'], f['ya'], f['xa']), (f['shape_b'], f['yb'], f['xb'])):
      expected[y:y + 9, x:x + 9] |= synthetic.GLYPHS[s]
    white = (img >= 225).all(-1)
    assert np.array_equal(white, expected), i


def test_labels_cover_all_classes_and_glyph_alone_is_uninformative():
  _, labels = synthetic.make_split(0, 'train', 2000)
  counts = np.bincount(labels, minlength=10)
  assert counts.min() > 120
  factors = [synthetic.example(0, 'train', i)[2] for i in range(2000)]
  # Neither glyph alone determines the label: fixing one glyph's shape leaves 6 possible labels.
  for side in ('shape_a', 'shape_b'):
    shapes = np.array([f[side] for f in factors])
    for s in range(5):
      assert len(set(labels[shapes == s])) == 6


def test_batches_resume_exactly_and_eval_counts_each_example_once():
  images, labels = synthetic.make_split(0, 'train', 50, 32)
  full = synthetic.train_batches(images, labels, batch_size=8, seed=1)
  seq = [next(full) for _ in range(9)]
  resumed = synthetic.train_batches(images, labels, batch_size=8, seed=1, start_step=5)
  for k in range(5, 9):
    r = next(resumed)
    assert np.array_equal(r['image'], seq[k]['image']) and np.array_equal(r['label'], seq[k]['label'])
  seen = []
  for p in range(2):
    for b in synthetic.eval_batches(images, labels, batch_size=16, process_index=p, process_count=2):
      seen += list(b['label'][b['mask']])
  assert sorted(seen) == sorted(labels.tolist())
