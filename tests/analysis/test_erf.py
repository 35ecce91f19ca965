"""ERF: the analysis on maps with known answers, the gradient on models with known answers, the CLI."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from lkd_jax import models
from lkd_jax import erf as erf_cli
from lkd_jax.analysis import erf, plots
from lkd_jax.convert import save_converted
from lkd_jax.errors import SetupError

SAMPLE = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'shared', 'data', 'imagenet-sample')
needs_sample = pytest.mark.skipif(not os.path.isdir(SAMPLE), reason=f'no {SAMPLE}')
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def _sides(rows):
  return [r['side'] for r in rows]


def test_uniform_map_squares_follow_the_area_and_none_qualifies_above_the_largest():
  rows = erf.high_contribution_area(np.full((64, 64), 5.0, np.float32))
  # share of a side-s square = s^2 / 4096: > 0.2 first at 29, > 0.3 at 37 (35^2 = 1225 < 1228.8),
  # > 0.5 at 47; the largest square (63) holds 3969 / 4096 < 0.99.
  assert _sides(rows) == [29, 37, 47, None]
  assert rows[2]['area_ratio'] == pytest.approx((47 / 64) ** 2)
  assert rows[3]['area_ratio'] is None
  assert 't=0.99: none' in erf.format_areas(rows)


def test_single_hot_pixel():
  m = np.zeros((32, 32), np.float32)
  m[16, 16] = 123.0
  rows = erf.high_contribution_area(m)
  assert _sides(rows) == [3, 3, 3, 3]
  assert rows[0]['area_ratio'] == pytest.approx((3 / 32) ** 2)
  m = np.zeros((32, 32), np.float32)
  m[0, 0] = 1.0  # outside every centred square
  assert _sides(erf.high_contribution_area(m)) == [None] * 4
  assert _sides(erf.high_contribution_area(np.zeros((32, 32)))) == [None] * 4  # no crash


def test_share_exactly_at_the_threshold_does_not_qualify():
  m = np.zeros((33, 33), np.float32)  # raw 9 -> log10(10) = 1 exactly: shares are exact fractions
  c = 16
  m[c - 1:c + 2, c - 1:c + 2] = 9.0  # 9 in the side-3 square
  ring = [(c - 2, c + d) for d in range(-2, 3)] + [(c + 2, c + d) for d in range(-2, 3)]
  for y, x in ring[:9]:  # 9 more in the side-5 ring: side 3 holds exactly half
    m[y, x] = 9.0
  a = erf.normalise(m)
  assert a.sum() == 18.0
  assert erf.smallest_square(a, 0.5) == 5      # strictly greater: 9/18 = 0.5 is not enough
  assert erf.smallest_square(a, 0.4999) == 3
  assert _sides(erf.high_contribution_area(m)) == [3, 3, 5, 5]


class DepthwiseModel(nnx.Module):
  """stage4 = depthwise conv of the input with `kernel` (kh, kw, 3), plus a bias keeping ReLU open."""

  def __init__(self, kernel: np.ndarray):
    self.kernel = nnx.Param(jnp.asarray(kernel, jnp.float32))

  def __call__(self, x, train: bool = False):
    k = self.kernel[...][:, :, None, :]
    y = jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     feature_group_count=x.shape[-1]) + 1000.0
    return y.mean(axis=(1, 2)), {'stage4': y}


class SquareModel(nnx.Module):
  """stage4 = x^2: the gradient at the centre is 2x, so it shows which input x is."""

  def __call__(self, x, train: bool = False):
    return x.mean(axis=(1, 2)), {'stage4': x * x}


def test_erf_of_a_depthwise_conv_is_its_kernel():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(5, 3, 3))
  kernel[1, :, :] = 0.0
  kernel[3, 0, :] = -1.0  # negative everywhere: ReLU'd away
  images = (rng.integers(0, 256, (3, 20, 20, 3), dtype=np.uint8))
  result = erf.compute(DepthwiseModel(kernel), iter(images), 3, 20, batch_size=8, log=lambda _: None)
  assert (result.used, result.skipped) == (3, 0)
  want = np.zeros((20, 20))
  want[10 - 2:10 + 3, 10 - 1:10 + 2] = np.maximum(kernel, 0).sum(-1)
  np.testing.assert_allclose(result.erf_map, want, rtol=1e-6, atol=0)
  assert set(zip(*np.nonzero(result.erf_map))) == set(zip(*np.nonzero(want)))


def test_gradient_is_taken_wrt_the_normalised_input():
  image = np.full((16, 16, 3), 200, np.uint8)
  result = erf.compute(SquareModel(), iter([image]), 1, 16, batch_size=8, log=lambda _: None)
  x = (200 / 255 - MEAN) / STD
  assert result.erf_map[8, 8] == pytest.approx(np.sum(2 * x), rel=1e-5)
  assert result.erf_map[8, 8] != pytest.approx(np.sum(2 * x / STD), rel=1e-2)  # w.r.t. [0, 1] pixels
  assert np.count_nonzero(result.erf_map) == 1


def test_nan_maps_are_skipped_and_counted():
  images = [np.full((8, 8, 3), 100, np.uint8)] * 3
  model = DepthwiseModel(np.full((1, 1, 3), np.nan))
  with pytest.raises(SetupError, match='none of the 3 images gave a finite map \\(3 had a NaN\\)'):
    erf.compute(model, iter(images), 3, 8, batch_size=8, log=lambda _: None)


def test_batches_are_padded_and_progress_is_reported():
  lines = []
  images = [np.full((8, 8, 3), 200, np.uint8)] * 10
  result = erf.compute(SquareModel(), iter(images), 10, 8, batch_size=8, log=lines.append)
  assert (result.used, result.skipped) == (10, 0)  # 8 + 2 real images, 6 padding ones masked
  assert len(lines) == 2 and lines[-1].startswith('erf: 10/10 images') and 'img/s' in lines[-1]


def quick_create(name, **kw):
  """models.create(name, num_classes=10, **kw) with its init compiled without XLA's backend
  optimisations: 5-7x less compile time on CPU, the same values to 1 ulp."""
  build = lambda: models.create(name, num_classes=10, **kw)
  graph, _ = nnx.split(nnx.eval_shape(build))
  state = jax.jit(lambda: nnx.split(build())[1],
                  compiler_options={'xla_backend_optimization_level': '0'})()
  return nnx.merge(graph, state)


@pytest.fixture(scope='module')
def tiny_models():
  """Randomly initialised resnet_atto and slak_atto with the demo teacher's large kernels."""
  return {'resnet_atto': quick_create('resnet_atto'),
          'slak_atto': quick_create('slak_atto', kernel_size=(31, 29, 27, 13, 5))}


def test_tiny_slak_erf_is_wider_than_tiny_resnet(tiny_models):
  images, n = erf.image_source('synthetic', 8)
  images = list(images)
  area = {}
  for name, model in tiny_models.items():
    result = erf.compute(model, iter(images), n, 64, log=lambda _: None)
    area[name] = erf.high_contribution_area(result.erf_map)[2]['area_ratio']
  assert area['slak_atto'] > 4 * area['resnet_atto'], area


def test_image_sources():
  images, n = erf.image_source('synthetic:train', 3)
  assert n == 3 and [i.shape for i in images] == [(64, 64, 3)] * 3
  with pytest.raises(SetupError, match='not a folder'):
    erf.image_source('/no/such/folder', 3)
  assert erf.resize(np.zeros((10, 30, 3), np.uint8), 16).shape == (16, 16, 3)


@needs_sample
def test_cli_end_to_end_on_the_imagenet_sample(tmp_path, capsys, tiny_models):
  converted = tmp_path / 'converted'  # a converted directory: loaded without an init compile
  save_converted(tiny_models['resnet_atto'], converted, {'model': 'resnet_atto', 'num_classes': 10})
  out = tmp_path / 'erf_resnet'
  assert erf_cli.main(['--model', 'resnet_atto', '--checkpoint', str(converted), '--num_classes', '10',
                       '--images', SAMPLE, '--num_images', '8', '--size', '32', '--out', str(out)]) == 0
  info = json.loads((out / 'erf.json').read_text())
  assert info['size'] == 32 and info['images_used'] == 8 and info['images_skipped'] == 0
  assert info['checkpoint_record']['kind'] == 'converted' and info['model'] == 'resnet_atto'
  assert [r['threshold'] for r in info['areas']] == [0.2, 0.3, 0.5, 0.99]
  erf_map = np.load(out / 'erf.npy')
  assert erf_map.shape == (32, 32) and erf_map.dtype == np.float32
  with Image.open(out / 'erf.png') as img:
    assert img.format == 'PNG' and img.size == plots.erf_figure_px(1)
  assert '| resnet_atto | 32 | 8 |' in capsys.readouterr().out

  # A run directory (its record names teacher, student and method) whose ERF is already in RUN/erf.
  run = tmp_path / 'run'
  (run / 'checkpoints').mkdir(parents=True)
  (run / 'config.json').write_text(json.dumps(
      {'model': {'name': 'resnet_atto'}, 'method': 'kd', 'seed': 0, 'teacher': {'name': 'slak_atto'}}))
  (run / 'final_metrics.json').write_text(json.dumps({'step': 6, 'teacher': {'model': 'slak_atto'}}))
  erf_cli.write_one(erf_map * 3, {**info, 'label': 'stale label'}, str(run / 'erf'))
  fig = tmp_path / 'figs' / 'compare.png'
  assert erf_cli.main(['--compare', str(out), str(run), '--out', str(fig)]) == 0
  with Image.open(fig) as img:
    assert img.format == 'PNG' and img.size == plots.erf_figure_px(2)
  rows = json.loads((tmp_path / 'figs' / 'compare.json').read_text())
  assert [r['label'] for r in rows] == ['resnet_atto', 'slak_atto → resnet_atto (kd)']
  assert '| slak_atto → resnet_atto (kd) | 32 |' in (tmp_path / 'figs' / 'compare.md').read_text()
  assert erf_cli.main(['--compare', str(out), '--size', '64', '--out', str(fig)]) == 1  # S differs
  assert "size 32 (asked: 64)" in capsys.readouterr().err
  assert erf_cli.main(['--compare', str(run), '--num_images', '9', '--out', str(fig)]) == 1
  assert 'pass --recompute' in capsys.readouterr().err


def test_tfds_images():
  import tensorflow_datasets.testing as tfds_testing
  with tfds_testing.mock_data(num_examples=5, policy=tfds_testing.MockPolicy.USE_CODE):
    images, n = erf.image_source('tfds:imagenet2012', 3)
    images = list(images)
  assert n == 3 and len(images) == 3 and all(i.ndim == 3 and i.shape[-1] == 3 for i in images)
  with pytest.raises(SetupError, match='tfds:no_such_dataset_xyz:validation'):
    erf.image_source('tfds:no_such_dataset_xyz', 3)
