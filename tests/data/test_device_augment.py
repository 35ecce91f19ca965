"""The device half of the train recipe (device_ops.py, device_augment.py) against augment.py's TF ops,
which tests/data/test_augment.py holds to PIL. Stated tolerances (device_ops.py says why):
- integer ops (Equalize, Invert, Posterize*, Solarize*, SolarizeAdd, Contrast's mean, Sharpness'
  kernel): exact;
- every other op and the resize: at most one level, on at most 1% of pixels (resize: 0.5%);
- random choices (flip, op, magnitude, sign, erasing box, noise) are JAX draws: equal in
  distribution, checked by frequencies and bounds, not per example.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from lkd_jax.data import augment as A
from lkd_jax.data import device_augment as DA
from lkd_jax.data import device_ops as D
from lkd_jax.data import recipe
from lkd_jax.errors import SetupError

from tests.data.test_augment import cfg, encode, noisy_image, seed, smooth_image

EXACT_OPS = {'Equalize', 'Invert', 'Posterize', 'PosterizeIncreasing', 'Solarize',
             'SolarizeIncreasing', 'SolarizeAdd'}
OP_NAMES = sorted(set(recipe.RAND_TRANSFORMS + recipe.RAND_INCREASING_TRANSFORMS))


def _image() -> np.ndarray:
  """Random pixels with full-range rows (every LUT entry, clipping) on a smooth field (geometry)."""
  img = smooth_image(40, 48)
  img[::3] = np.random.default_rng(1).integers(0, 256, img[::3].shape)
  return img


@pytest.mark.parametrize('name', OP_NAMES)
def test_device_op_matches_the_tf_op(name):
  img = _image()
  # The clip ends 0 and 10 plus random magnitudes (blend factors at magnitudes where float64 is
  # exact and float32 is not, e.g. Brightness m=5 -> 1.0, are a measure-zero event: not tested).
  mags = np.concatenate([[0.0, 10.0], np.random.default_rng(2).uniform(0, 10, 4)]).astype(np.float32)
  cases = [(m, neg) for m in mags for neg in (False, True)]
  got = jax.jit(jax.vmap(lambda m, n: D.apply_op(jnp.asarray(img), name, m, n)))(
      jnp.asarray([c[0] for c in cases]), jnp.asarray([c[1] for c in cases]))
  for (m, neg), g in zip(cases, np.asarray(got).astype(int)):
    ref = A.apply_op(tf.constant(img), name, float(m), neg).numpy().astype(int)
    diff = np.abs(g - ref)
    if name in EXACT_OPS:
      assert diff.max() == 0, (name, m, neg)
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, (name, m, neg, (diff > 0).mean())


def test_erase_fill_is_the_tf_fill():
  z = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32) * 3
  mean, std = tf.constant(A.IMAGENET_DEFAULT_MEAN), tf.constant(A.IMAGENET_DEFAULT_STD)
  np.testing.assert_array_equal(np.asarray(D.erase_fill(jnp.asarray(z))),
                                A._to_uint8(255.0 * (mean + std * z)).numpy())


# ------------------------------------------------------------------------------------ resize

@pytest.mark.parametrize('method', ['bicubic', 'bilinear', 'lanczos3'])
def test_canvas_resize_matches_tf_resize(method):
  size, canvas = 32, 96
  rng = np.random.default_rng(0)
  shapes = [(5, 7), (20, 33), (32, 32), (60, 45), (96, 70), (31, 96)]
  crops = [rng.integers(0, 256, s + (3,), np.uint8) // 2 + smooth_image(*s) // 2 for s in shapes]
  canvases = np.stack([np.pad(c, [(0, canvas - c.shape[0]), (0, canvas - c.shape[1]), (0, 0)],
                              constant_values=255) for c in crops])   # padding must not leak in
  got = jax.jit(jax.vmap(lambda c, hw: D.resize_from_canvas(c, hw, size, method)))(
      canvases, jnp.asarray(shapes, jnp.int32))
  for crop, g in zip(crops, np.asarray(got).astype(int)):
    ref = A._resize(tf.constant(crop), size, method).numpy().astype(int)
    diff = np.abs(g - ref)
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.005, (crop.shape, (diff > 0).mean())
    if crop.shape[:2] == (size, size):
      np.testing.assert_array_equal(g, crop)   # a crop the host already resized passes unchanged


def _device_images(datas, seeds, d):
  """The device path end to end: the host half in tf.data, padded batching, device_augment.images."""
  canvas = DA.canvas_size(d)
  ds = tf.data.Dataset.from_tensor_slices((datas, seeds)).map(
      lambda x, s: A.train_preprocess_for_device(x, s, d, canvas))
  shapes = {k: [canvas, canvas, 3] if k == 'image' else s.shape for k, s in ds.element_spec.items()}
  batch = next(iter(ds.padded_batch(len(datas), padded_shapes=shapes))).items()
  return np.asarray(jax.jit(lambda b: DA.images(b, d))({k: v.numpy() for k, v in batch}))


@pytest.mark.parametrize('canvas', [0, 40])
def test_device_path_without_random_ops_is_the_host_crop_and_resize(canvas):
  # canvas 40 < most crops: those are resized on the host and pass the device unchanged (exact).
  imgs = [smooth_image(60, 80), smooth_image(90, 40), noisy_image(50, 50)]
  datas = [encode(imgs[0], 'JPEG'), encode(imgs[1], 'PNG'), encode(imgs[2], 'PNG')]
  seeds = np.stack([np.arange(3), np.full(3, 5)], 1)
  d = cfg(randaugment='', reprob=0.0, hflip=0.0, canvas=canvas)
  dev = _device_images(datas, seeds, d).astype(int)
  for x, s, g in zip(datas, seeds, dev):
    host = A.train_preprocess(tf.constant(x), tf.constant(s), d).numpy().astype(int)
    assert np.abs(g - host).max() <= 1 and (g != host).mean() <= 0.005
  flipped = _device_images(datas, seeds, cfg(randaugment='', reprob=0.0, hflip=1.0, canvas=canvas))
  np.testing.assert_array_equal(flipped, dev[:, :, ::-1])


def test_full_recipe_gives_each_example_its_own_draws():
  datas = [encode(smooth_image(60, 80), 'JPEG')] * 4
  seeds = np.stack([np.zeros(4, int), np.full(4, 5)], 1)
  seeds[2:, 0] = 1   # examples 0 and 1 (and 2 and 3) share a host seed, so crop and device draws
  out = _device_images(datas, seeds, cfg(reprob=0.5))
  assert out.shape == (4, 32, 32, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[0], out[1])
  np.testing.assert_array_equal(out[2], out[3])
  assert not np.array_equal(out[0], out[2])


def test_auto_augments_on_the_device_off_cpu():
  assert [DA.on_device(cfg(augment_on='auto'), b) for b in ('cpu', 'gpu', 'tpu')] == [False, True, True]
  assert DA.on_device(cfg(augment_on='device'), 'cpu') and not DA.on_device(cfg(augment_on='host'))


def test_a_batch_without_crops_passes_unchanged():
  batch = {'image': jnp.ones((2, 8, 8, 3), jnp.uint8), 'label': jnp.zeros(2, jnp.int32)}
  assert DA.images(batch, cfg()) is batch['image']


# ------------------------------------------------------------------------------------ random ops

def _uniforms(n: int, draws: int) -> jax.Array:
  return jax.random.uniform(jax.random.key(7), (n, draws))


def test_device_rand_augment_applies_each_layer_with_probability_half():
  # As test_augment's twin: every op at m=9 changes this image, so unchanged <=> skipped.
  img = jnp.asarray(smooth_image(24, 24) // 2 + 40)
  spec = 'rand-n1-m9-mstd0-inc1'
  out = jax.jit(jax.vmap(lambda u: DA.rand_augment(img, u, spec)))(
      _uniforms(400, DA.rand_augment_draws(spec)))
  unchanged = np.mean([(o == np.asarray(img)).all() for o in np.asarray(out)])
  assert abs(unchanged - 0.5) < 0.08


def test_device_rand_augment_w0_never_draws_zero_weight_ops():
  spec = recipe.parse_rand_augment_spec('rand-n2-m9-w0')
  idx = np.asarray(jax.vmap(lambda u: DA._choose_ops(u, spec))(_uniforms(500, 15)))
  zero = [i for i, w in enumerate(recipe.RAND_CHOICE_WEIGHTS_0) if w == 0]
  assert not np.isin(idx, zero).any() and (idx[:, 0] != idx[:, 1]).all()
  uniform = np.asarray(jax.vmap(lambda u: DA._choose_ops(u, spec._replace(weight_idx=None)))(
      _uniforms(3000, 15))).ravel()
  np.testing.assert_allclose(np.bincount(uniform, minlength=15) / uniform.size, 1 / 15, atol=0.015)


def test_device_magnitudes_follow_timm():
  u = np.asarray(_uniforms(1, 20000)[0])
  mags = np.asarray(DA._magnitude(u, recipe.parse_rand_augment_spec('rand-m9-mstd0.5')))
  assert abs(mags.mean() - 9.0) < 0.02 and abs(mags.std() - 0.5) < 0.02 and mags.max() <= 10.0
  mags = np.asarray(DA._magnitude(u, recipe.parse_rand_augment_spec('rand-m8-mstd101')))
  assert abs(mags.mean() - 4.0) < 0.1 and mags.min() >= 0 and mags.max() <= 8.0   # U(0, m)
  assert float(DA._magnitude(u[0], recipe.parse_rand_augment_spec('rand-m7'))) == 7.0


@functools.partial(jax.jit, static_argnames=('n', 'prob', 'mode'))
def _erase(img, n, prob, mode):
  u = _uniforms(n, DA.erasing_draws(img.shape, mode))
  return jax.vmap(lambda u: DA.random_erasing(img, u, prob, mode))(u)


def test_device_random_erasing_const_fills_one_rectangle_within_bounds():
  h, w = 40, 50
  out = np.asarray(_erase(jnp.zeros((h, w, 3), jnp.uint8), 30, 1.0, 'const'))
  for o in out:
    rows, cols = np.nonzero((o != 0).any(-1))
    assert rows.size, 'prob 1 must erase'
    box = np.zeros((h, w), bool)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    np.testing.assert_array_equal((o != 0).any(-1), box)
    assert (o[box] == np.array(A.FILL)).all()
    assert 0.02 * 0.8 <= box.mean() <= 1 / 3 * 1.2
    bh, bw = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert 0.3 * 0.8 <= bh / bw <= 1 / 0.3 * 1.2


def test_device_random_erasing_probability_and_pixel_noise():
  img = jnp.full((48, 48, 3), 7, jnp.uint8)
  out = np.asarray(_erase(img, 400, 0.25, 'pixel'))
  erased = (out != 7).any((1, 2, 3))
  assert abs(erased.mean() - 0.25) < 0.06
  px = out[erased][(out[erased] != 7).any(-1)]
  z = (px - 255 * np.array(A.IMAGENET_DEFAULT_MEAN)) / (255 * np.array(A.IMAGENET_DEFAULT_STD))
  assert np.abs(z.mean(0)).max() < 0.1 and (np.abs(z.std(0) - 0.95) < 0.08).all()


@pytest.mark.parametrize('change, bad', [({'augment_on': 'gpu'}, 'augment_on'),
                                         ({'canvas': 16}, 'canvas'),
                                         ({'remode': 'noise'}, 'remode'),
                                         ({'randaugment': 'rand-x1'}, 'x1'),
                                         ({'interpolation': 'cubic'}, 'cubic')])
def test_check_names_the_bad_setting(change, bad):
  with pytest.raises(SetupError, match=bad):
    DA.check(cfg(**change))
