"""lkd_jax.data.augment against timm's recipe: PIL references for every pixel op and the eval crop,
timm's own sampling loops re-run in Python for the crop distribution, closed forms elsewhere."""
import glob
import io
import math
import os
import random

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from configs import common

from lkd_jax.data import augment as A

SAMPLE_DIR = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'shared', 'data',
                          'imagenet-sample')


def smooth_image(h: int, w: int) -> np.ndarray:
  """A smooth colourful uint8 test image (resampling errors stay small on it)."""
  yy, xx = np.mgrid[0:h, 0:w]
  img = np.stack([128 + 100 * np.sin(xx / 9.0), 128 + 100 * np.cos(yy / 7.0 + xx / 13.0),
                  40 + 170 * xx / w], -1)
  return img.clip(0, 255).astype(np.uint8)


def noisy_image(h: int = 24, w: int = 30) -> np.ndarray:
  """Random pixels in [20, 230) plus a few full-range rows: exercises every LUT entry and clip."""
  rng = np.random.default_rng(0)
  img = rng.integers(20, 230, (h, w, 3), dtype=np.uint8)
  img[:5] = rng.integers(0, 256, (5, w, 3))
  return img


def encode(arr: np.ndarray, fmt: str, mode: str | None = None, **kw) -> bytes:
  im = Image.fromarray(arr)
  if mode:
    im = im.convert(mode)
  buf = io.BytesIO()
  im.save(buf, fmt, **kw)
  return buf.getvalue()


def seed(a: int, b: int = 0) -> tf.Tensor:
  return tf.constant([a, b], tf.int64)


def cfg(**kw) -> ml_collections.ConfigDict:
  """The recipe's data config (configs/common.py) at 32 px, with overrides."""
  c = common.base_config().data
  c.update(image_size=32, **kw)
  return c


# ------------------------------------------------------------------------------------ decoding

FORMATS = {
    'jpeg_rgb': lambda x: encode(x, 'JPEG'),
    'jpeg_gray': lambda x: encode(x, 'JPEG', 'L'),
    'jpeg_cmyk': lambda x: encode(x, 'JPEG', 'CMYK'),
    'png_rgb': lambda x: encode(x, 'PNG'),
    'png_rgba': lambda x: encode(x, 'PNG', 'RGBA'),
    'png_gray': lambda x: encode(x, 'PNG', 'L'),
}


@pytest.mark.parametrize('fmt', sorted(FORMATS))
def test_decode_any_format_gives_uint8_rgb(fmt):
  data = tf.constant(FORMATS[fmt](smooth_image(40, 50)))
  train = A.decode_and_random_crop(data, seed(1), 24)
  evl = A.decode_and_center_crop(data, 24)
  for out in (train, evl):
    assert out.shape == (24, 24, 3) and out.dtype == tf.uint8
  if fmt.endswith('gray'):
    e = evl.numpy()
    assert (e[..., 0] == e[..., 1]).all() and (e[..., 1] == e[..., 2]).all()


def test_png_alpha_is_dropped_and_lossless_paths_agree():
  img = smooth_image(40, 50)
  rgb = A.decode_and_center_crop(tf.constant(encode(img, 'PNG')), 24).numpy()
  rgba = A.decode_and_center_crop(tf.constant(encode(img, 'PNG', 'RGBA')), 24).numpy()
  np.testing.assert_array_equal(rgb, rgba)


# ------------------------------------------------------------------------------------ random crop


def test_random_crop_of_whole_square_image_is_plain_resize():
  img = smooth_image(64, 64)
  out = A.decode_and_random_crop(tf.constant(encode(img, 'PNG')), seed(5), 32, scale=(1.0, 1.0),
                                 ratio=(1.0, 1.0)).numpy().astype(int)
  ref = tf.image.resize(img, [32, 32], 'bicubic', antialias=True)
  np.testing.assert_array_equal(out, np.clip(np.round(ref.numpy()), 0, 255))
  pil = np.asarray(Image.fromarray(img).resize((32, 32), Image.BICUBIC)).astype(int)
  assert np.abs(out - pil).max() <= 1


@pytest.mark.parametrize('hw, window', [((4, 200), [0, 97, 4, 5]), ((200, 4), [97, 0, 5, 4]),
                                        ((30, 30), [0, 0, 30, 30])])
def test_random_crop_fallback_is_timm_central_crop(hw, window):
  # No try can fit (the crop must cover >= 50% of the area at aspect <= 4/3), so timm falls back to
  # the central crop clamped to the ratio range (or the whole image when its ratio is in range).
  scale = (0.5, 1.0) if hw[0] != hw[1] else (1.5, 2.0)
  got = A.rrc_window(tf.constant(hw), seed(0), scale=scale).numpy().tolist()
  assert got == window


def _timm_get_params(width, height, scale, ratio, rng):
  """timm RandomResizedCropAndInterpolation.get_params (without the fallback), for reference."""
  for _ in range(10):
    target = rng.uniform(*scale) * width * height
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if w <= width and h <= height:
      return rng.randint(0, height - h), rng.randint(0, width - w), h, w
  return None


def test_random_crop_windows_follow_timm_distribution():
  h, w, n = 100, 150, 1000
  ds = tf.data.Dataset.range(n).map(
      lambda i: A.rrc_window(tf.constant([h, w]), tf.stack([i, tf.constant(3, tf.int64)])))
  win = next(iter(ds.batch(n))).numpy().astype(float)
  top, left, ch, cw = win.T
  assert (top >= 0).all() and (left >= 0).all() and (top + ch <= h).all() and (left + cw <= w).all()
  area = ch * cw / (h * w)
  assert area.min() >= 0.08 * 0.9 and area.max() <= 1.0
  assert (cw / ch).min() >= 0.75 * 0.9 and (cw / ch).max() <= 4 / 3 * 1.1
  rng = random.Random(0)
  ref = np.array([p for p in (_timm_get_params(w, h, (0.08, 1.0), (3 / 4, 4 / 3), rng)
                              for _ in range(20000)) if p], float)
  ref_area = ref[:, 2] * ref[:, 3] / (h * w)
  # Mean area is 0.39, not 0.54: large draws are rejected. TF's sample_distorted_bounding_box differs.
  assert abs(area.mean() - ref_area.mean()) < 0.025
  assert abs(np.log(cw / ch).mean() - np.log(ref[:, 3] / ref[:, 2]).mean()) < 0.03
  assert abs(top.mean() - ref[:, 0].mean()) < 2.0


# ------------------------------------------------------------------------------------ eval crop


def _timm_eval_reference(img: np.ndarray, size: int = 224, crop_pct: float = 0.875) -> np.ndarray:
  """torchvision Resize(int(size / crop_pct), BICUBIC) + CenterCrop(size) on a PIL image."""
  h, w = img.shape[:2]
  s = int(size / crop_pct)
  nh, nw = (int(s * h / w), s) if w <= h else (s, int(s * w / h))
  top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
  out = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BICUBIC))
  return out[top:top + size, left:left + size].astype(int)


@pytest.mark.parametrize('hw', [(256, 320), (300, 400), (401, 299)])
def test_center_crop_matches_timm_eval_transform(hw):
  img = smooth_image(*hw)
  out = A.decode_and_center_crop(tf.constant(encode(img, 'PNG')), 224).numpy().astype(int)
  ref = _timm_eval_reference(img)
  if hw == (256, 320):   # shorter side already 256: a pure crop, rows 16.., cols 48..
    np.testing.assert_array_equal(out, img[16:240, 48:272])
  diff = np.abs(out - ref)
  assert diff.max() <= 1 and diff.mean() < 0.1


def test_center_crop_fused_jpeg_decode_equals_full_decode():
  img = smooth_image(300, 410)
  jpg = encode(img, 'JPEG', quality=90)
  fused = A.decode_and_center_crop(tf.constant(jpg), 224).numpy().astype(int)
  decoded = tf.io.decode_jpeg(jpg, channels=3, dct_method='INTEGER_ACCURATE').numpy()
  full = A.decode_and_center_crop(tf.constant(encode(decoded, 'PNG')), 224).numpy().astype(int)
  assert np.abs(fused - full).max() <= 1
  assert np.abs(fused - _timm_eval_reference(decoded)).max() <= 1


def test_jpeg_pixels_equal_pil_decode():
  # 256x300: the shorter side is already 256, so the eval crop is a pure crop of the decoded pixels.
  jpg = encode(smooth_image(256, 300) // 3 + noisy_image(256, 300) // 2, 'JPEG', quality=90)
  out = A.decode_and_center_crop(tf.constant(jpg), 224).numpy()
  pil = np.asarray(Image.open(io.BytesIO(jpg)).convert('RGB'))
  np.testing.assert_array_equal(out, pil[16:240, 38:262])


def test_center_crop_on_real_photos_matches_pil():
  files = sorted(glob.glob(os.path.join(SAMPLE_DIR, '*.JPEG')))[:3]
  if not files:
    pytest.skip(f'no sample JPEGs under {SAMPLE_DIR}')
  for f in files:
    data = open(f, 'rb').read()
    out = A.decode_and_center_crop(tf.constant(data), 224).numpy().astype(int)
    ref = _timm_eval_reference(np.asarray(Image.open(f).convert('RGB')))
    diff = np.abs(out - ref)
    # Same decoded pixels (accurate IDCT); PIL rounds to uint8 between its two resize passes and
    # clips the overshoot there, which moves a few pixels on sharp edges by more than 1.
    assert diff.mean() < 0.3 and np.percentile(diff, 99.9) <= 1 and diff.max() <= 12, f


# ------------------------------------------------------------------------------------ RandAugment ops


def _enhance_factor(m, negate, increasing=True):
  """timm _enhance_increasing_level_to_arg / _enhance_level_to_arg."""
  if not increasing:
    return (m / 10.0) * 1.8 + 0.1
  level = (m / 10.0) * .9
  return max(0.1, 1.0 + (-level if negate else level))


def _posterize(pil, bits):
  """timm posterize on old Pillow: bits 0 gives black (Pillow 13 refuses bits=0)."""
  if bits >= 8:
    return pil
  return np.zeros_like(np.asarray(pil)) if bits == 0 else ImageOps.posterize(pil, bits)


def _solarize_add(pil, add):
  lut = [min(255, i + add) if i < 128 else i for i in range(256)]
  return pil.point(lut * 3)


PIXEL_CASES = [
    ('Invert', 9, False, lambda p, m, n: ImageOps.invert(p)),
    ('AutoContrast', 9, False, lambda p, m, n: ImageOps.autocontrast(p)),
    ('Equalize', 9, False, lambda p, m, n: ImageOps.equalize(p)),
] + [
    case for m in (9.0, 4.3, 10.0, 0.0) for case in [
        ('PosterizeIncreasing', m, False, lambda p, m, n: _posterize(p, 4 - int((m / 10) * 4))),
        ('Posterize', m, False, lambda p, m, n: _posterize(p, int((m / 10) * 4))),
        ('SolarizeIncreasing', m, False,
         lambda p, m, n: ImageOps.solarize(p, 256 - int((m / 10) * 256))),
        ('Solarize', m, False, lambda p, m, n: ImageOps.solarize(p, int((m / 10) * 256))),
        ('SolarizeAdd', m, False, lambda p, m, n: _solarize_add(p, int((m / 10) * 110))),
        ('Contrast', m, False,
         lambda p, m, n: ImageEnhance.Contrast(p).enhance(_enhance_factor(m, n, False))),
    ] + [
        (name, m, neg, lambda p, m, n, e=enh: e(p).enhance(_enhance_factor(m, n)))
        for neg in (False, True)
        for name, enh in [('BrightnessIncreasing', ImageEnhance.Brightness),
                          ('ContrastIncreasing', ImageEnhance.Contrast),
                          ('ColorIncreasing', ImageEnhance.Color),
                          ('SharpnessIncreasing', ImageEnhance.Sharpness)]
    ]
]


@pytest.mark.parametrize('name, magnitude, negate, ref_fn', PIXEL_CASES,
                         ids=[f'{c[0]}-m{c[1]}-{"neg" if c[2] else "pos"}' for c in PIXEL_CASES])
def test_pixel_op_matches_pil_exactly(name, magnitude, negate, ref_fn):
  img = noisy_image()
  out = A.apply_op(tf.constant(img), name, magnitude, negate).numpy()
  np.testing.assert_array_equal(out, np.asarray(ref_fn(Image.fromarray(img), magnitude, negate)))


def _pil_rotate_matrix(deg, w, h):
  """PIL Image.rotate's affine matrix (output -> input, continuous coordinates)."""
  ang = -math.radians(deg)
  a, b, d, e = math.cos(ang), math.sin(ang), -math.sin(ang), math.cos(ang)
  cx, cy = w / 2, h / 2
  return (a, b, -a * cx - b * cy + cx, d, e, -d * cx - e * cy + cy)


H, W = 24, 30
AFFINE_CASES = [   # (op, magnitude, negate, PIL affine matrix from timm's level formulas)
    ('Rotate', 9.0, False, _pil_rotate_matrix(27.0, W, H)),
    ('Rotate', 6.0, True, _pil_rotate_matrix(-18.0, W, H)),
    ('ShearX', 9.0, False, (1, 0.27, 0, 0, 1, 0)),
    ('ShearY', 9.0, True, (1, 0, 0, -0.27, 1, 0)),
    ('TranslateXRel', 9.0, False, (1, 0, 0.405 * W, 0, 1, 0)),
    ('TranslateYRel', 9.0, True, (1, 0, 0, 0, 1, -0.405 * H)),
]


@pytest.mark.parametrize('name, magnitude, negate, matrix', AFFINE_CASES,
                         ids=[f'{c[0]}-{"neg" if c[2] else "pos"}' for c in AFFINE_CASES])
def test_geometric_op_matches_pil_geometry(name, magnitude, negate, matrix):
  """Same sampling points as PIL (bilinear) inside the image; exact fill colour far outside."""
  img = smooth_image(H, W)
  out = A.apply_op(tf.constant(img), name, magnitude, negate).numpy().astype(int)
  pil = Image.fromarray(img).transform((W, H), Image.AFFINE, matrix, resample=Image.BILINEAR,
                                       fillcolor=A.FILL)
  ref = np.asarray(pil).astype(int)
  a, b, c, d, e, f = matrix
  yy, xx = np.mgrid[0:H, 0:W] + 0.5
  sx, sy = a * xx + b * yy + c - 0.5, d * xx + e * yy + f - 0.5   # source pixel index
  inside = (sx >= 0) & (sx < W - 1) & (sy >= 0) & (sy < H - 1)
  outside = (sx < -1) | (sx > W) | (sy < -1) | (sy > H)
  assert inside.sum() > 300 and outside.sum() > 50
  assert np.abs(out - ref)[inside].max() <= 1
  assert (out[outside] == np.array(A.FILL)).all()


def test_translate_by_whole_pixels_is_a_shift_with_fill():
  img = noisy_image(16, 20)
  out = A.apply_op(tf.constant(img), 'TranslateXRel', 10.0).numpy()   # 0.45 * 20 = 9 px left
  np.testing.assert_array_equal(out[:, :11], img[:, 9:])
  assert (out[:, 11:] == np.array(A.FILL, np.uint8)).all()
  out = A.apply_op(tf.constant(img), 'TranslateYRel', 10.0, negate=True).numpy()   # 7.2 px down
  assert (out[:7] == np.array(A.FILL, np.uint8)).all()


def test_every_op_gives_the_same_pixels_in_graph_mode():
  img = tf.constant(noisy_image())
  names = sorted(set(A.RAND_TRANSFORMS + A.RAND_INCREASING_TRANSFORMS))
  graph = tf.function(lambda x, m: [A.apply_op(x, n, m, True) for n in names])
  for name, g in zip(names, graph(img, tf.constant(7.5, tf.float64))):
    np.testing.assert_array_equal(g.numpy(), A.apply_op(img, name, 7.5, True).numpy(), err_msg=name)


# ------------------------------------------------------------------------------------ RandAugment


def test_parse_rand_augment_spec():
  spec = A.parse_rand_augment_spec('rand-m9-mstd0.5-inc1')
  assert (spec.num_layers, spec.magnitude, spec.magnitude_std, spec.magnitude_max) == (2, 9, 0.5, 10)
  assert spec.transforms == A.RAND_INCREASING_TRANSFORMS and spec.weight_idx is None
  spec = A.parse_rand_augment_spec('rand-n3-m7-mstd101-mmax12-inc0-w0')
  assert (spec.num_layers, spec.magnitude, spec.magnitude_max, spec.weight_idx) == (3, 7, 12, 0)
  assert spec.magnitude_std == math.inf and spec.transforms == A.RAND_TRANSFORMS
  assert A.parse_rand_augment_spec('rand').magnitude == 10


@pytest.mark.parametrize('spec, bad', [('rand-m9-foo1', 'foo1'), ('augmix-m3', 'augmix'),
                                       ('rand-m9-mstd', 'mstd'), ('rand-m9.5', 'm9.5'),
                                       ('rand-m9--n2', "''"), ('rand-w1', 'w1')])
def test_parse_rand_augment_spec_errors_name_the_bad_part(spec, bad):
  with pytest.raises(ValueError, match=bad):
    A.parse_rand_augment_spec(spec)


def _rand_augment_batch(img, seeds, spec):
  ds = tf.data.Dataset.from_tensor_slices(seeds).map(
      lambda s: A.rand_augment(tf.constant(img), s, spec))
  return next(iter(ds.batch(len(seeds)))).numpy()


def test_rand_augment_is_deterministic_per_seed_and_varies_across_seeds():
  img = smooth_image(32, 32)
  seeds = np.stack([np.arange(12), np.full(12, 9)], 1)
  a = _rand_augment_batch(img, seeds, 'rand-m9-mstd0.5-inc1')
  b = _rand_augment_batch(img, seeds, 'rand-m9-mstd0.5-inc1')
  assert a.shape == (12, 32, 32, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert len({x.tobytes() for x in a}) >= 6
  eager = A.rand_augment(tf.constant(img), tf.constant(seeds[3]), 'rand-m9-mstd0.5-inc1').numpy()
  np.testing.assert_array_equal(eager, a[3])
  np.testing.assert_array_equal(A.rand_augment(tf.constant(img), seed(1), 'rand-n0'), img)


def test_rand_augment_applies_each_layer_with_probability_half():
  # On this image every op at m=9 changes some pixel, so a single layer leaves it unchanged
  # exactly when the op is skipped (timm AugmentOp prob 0.5).
  img = smooth_image(24, 24) // 2 + 40
  seeds = np.stack([np.arange(300), np.ones(300, int)], 1)
  out = _rand_augment_batch(img, seeds, 'rand-n1-m9-mstd0-inc1')
  unchanged = np.mean([(o == img).all() for o in out])
  assert abs(unchanged - 0.5) < 0.1


# ------------------------------------------------------------------------------------ random erasing


def test_random_erasing_prob_zero_is_identity():
  img = noisy_image()
  np.testing.assert_array_equal(A.random_erasing(tf.constant(img), seed(1), prob=0.0), img)


@pytest.mark.parametrize('s', range(6))
def test_random_erasing_const_fills_one_rectangle_within_area_bounds(s):
  h, w = 40, 50
  img = np.zeros((h, w, 3), np.uint8)
  out = A.random_erasing(tf.constant(img), seed(s), prob=1.0, mode='const').numpy()
  changed = (out != 0).any(-1)
  rows, cols = np.nonzero(changed)
  assert rows.size, 'prob 1 must erase'
  box = np.zeros_like(changed)
  box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
  np.testing.assert_array_equal(changed, box)
  assert (out[changed] == np.array(A.FILL)).all()   # timm 'const' = 0 after normalisation = mean
  area = box.sum() / (h * w)
  assert 0.02 * 0.8 <= area <= 1 / 3 * 1.2
  bh, bw = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
  assert 0.3 * 0.8 <= bh / bw <= 1 / 0.3 * 1.2


def test_random_erasing_pixel_noise_is_normal_in_normalised_units():
  h, w = 120, 120
  img = np.full((h, w, 3), 7, np.uint8)   # a value the noise essentially never hits
  inside_px = []
  for s in range(4):
    out = A.random_erasing(tf.constant(img), seed(s), prob=1.0, mode='pixel').numpy()
    changed = (out != 7).any(-1)
    rows, cols = np.nonzero(changed)
    assert (out[~changed] == 7).all()
    box = out[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert (box != 7).any(-1).mean() > 0.99   # the whole rectangle is redrawn
    inside_px.append(box.reshape(-1, 3))
  z = (np.concatenate(inside_px) - 255 * np.array(A.IMAGENET_DEFAULT_MEAN)) / (
      255 * np.array(A.IMAGENET_DEFAULT_STD))
  # Clipping to [0, 255] truncates z at about -2.1 / +2.4, which shrinks the std a little.
  assert np.abs(z.mean(0)).max() < 0.1 and (np.abs(z.std(0) - 0.95) < 0.08).all()


# ------------------------------------------------------------------------------------ entry points


def _dataset_outputs(datas, fn):
  ds = tf.data.Dataset.from_tensor_slices(datas).enumerate().map(fn)
  return [x.numpy() for x in ds]


def test_train_and_eval_preprocess_in_tf_data_are_deterministic():
  imgs = [smooth_image(60, 80), smooth_image(7, 5), smooth_image(90, 40)]
  datas = [encode(imgs[0], 'JPEG'), encode(imgs[1], 'PNG'), encode(imgs[2], 'JPEG', 'L')]
  c = cfg(reprob=0.5)
  train = lambda i, x: A.train_preprocess(x, tf.stack([i, tf.constant(11, tf.int64)]), c)
  other = lambda i, x: A.train_preprocess(x, tf.stack([i, tf.constant(12, tf.int64)]), c)
  a, b, o = (_dataset_outputs(datas, f) for f in (train, train, other))
  for x, y, z in zip(a, b, o):
    assert x.shape == (32, 32, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, y)
    assert not (x == z).all()
  ev = _dataset_outputs(datas, lambda i, x: A.eval_preprocess(x, c))
  assert all(e.shape == (32, 32, 3) and e.dtype == np.uint8 for e in ev)


def test_train_preprocess_flip_uses_its_own_seed():
  data = tf.constant(encode(smooth_image(50, 70), 'PNG'))
  kw = dict(randaugment='', reprob=0.0)
  plain = A.train_preprocess(data, seed(4), cfg(hflip=0.0, **kw)).numpy()
  flipped = A.train_preprocess(data, seed(4), cfg(hflip=1.0, **kw)).numpy()
  np.testing.assert_array_equal(flipped, plain[:, ::-1])
  crop = A.decode_and_random_crop(
      data, tf.random.experimental.stateless_split(seed(4), 4)[0], 32).numpy()
  np.testing.assert_array_equal(plain, crop)
