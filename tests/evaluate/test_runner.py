"""The evaluator end to end through the CLI: a run directory (raw + EMA) on the embedded task, every
TFDS set on mock data, a missing set, exact masked counts on 8 devices, the teacher sanity check."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lkd_jax import models, sharding, train
from lkd_jax.data import synthetic
from lkd_jax.evaluate import __main__ as cli
from lkd_jax.evaluate import corruptions, runner, sets
from lkd_jax.step import eval_logits, normalize
from tests.conftest import tiny_run_config

NUM_EVAL = 40  # over 8 devices and batch 16: 3 batches, the last one padded


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  train.train_and_evaluate(tiny_run_config(ema_decay=0.9, total_steps=2, checkpoint_every=2),
                           workdir)
  return workdir


@pytest.fixture(scope='module')
def imagenet_dir(tmp_path_factory):
  """A converted directory holding a 1000-class resnet_atto (the form of a converted teacher)."""
  from lkd_jax.convert.teacher import save_converted
  dst = tmp_path_factory.mktemp('conv') / 'resnet_atto'
  save_converted(models.create('resnet_atto', num_classes=1000),
                 dst, {'model': 'resnet_atto', 'num_classes': 1000, 'model_kwargs': {}})
  return str(dst)


def _cli(tmp_path, *args):
  out = tmp_path / 'eval'
  assert cli.main([*args, '--out', str(out)]) == 0
  return json.loads((out / 'eval.json').read_text()), (out / 'eval.md').read_text()


@pytest.fixture(scope='module')
def run_eval(run_dir, tmp_path_factory):
  """The CLI on the run directory, with the run itself as the teacher."""
  out = tmp_path_factory.mktemp('eval')
  assert cli.main(['--checkpoint', run_dir, '--teacher_checkpoint', run_dir, '--corruptions',
                   'gaussian_noise,pixelate', '--severities', '5', '--batch_size', '16',
                   '--num_eval', str(NUM_EVAL), '--out', str(out)]) == 0
  return json.loads((out / 'eval.json').read_text()), (out / 'eval.md').read_text()


def test_run_dir_raw_and_ema_clean_corrupted_and_agreement(run_eval):
  result, md = run_eval
  assert set(result['weights']) == {'raw', 'ema'}
  assert 'moving average' in result['weights_evaluated']['ema']
  raw = result['weights']['raw']
  assert sorted(raw['sets']) == ['synthetic', 'synthetic_c/gaussian_noise/5',
                                 'synthetic_c/pixelate/5']
  assert all(r['count'] == NUM_EVAL for r in raw['sets'].values())
  # The teacher is the same run's raw weights: the raw student agrees with it everywhere.
  assert raw['sets']['synthetic']['agreement'] == 1.0
  assert raw['sets']['synthetic']['kl'] == pytest.approx(0.0, abs=1e-5)
  c = raw['summary']['synthetic_c']
  assert set(c['error']) == {'gaussian_noise', 'pixelate'} and c['mce'] is None
  assert '| raw |' in md and '| ema |' in md and 'synthetic-C mean err' in md


def test_masked_counts_match_a_direct_evaluation_on_8_devices(run_dir, run_eval):
  got = run_eval[0]['weights']['raw']['sets']['synthetic']
  loaded = runner.load(run_dir, ema=False)
  images, labels = synthetic.make_split(0, 'validation', NUM_EVAL, 32)
  w = loaded.weights[0]
  logits = jax.jit(functools.partial(eval_logits, graph=loaded.graph, rest=loaded.rest))(
      w.params, w.batch_stats, images)
  assert jax.device_count() == 8 and got['count'] == NUM_EVAL
  assert got['top1'] == pytest.approx(float(jnp.mean(jnp.argmax(logits, -1) == labels)))


def test_every_tfds_set_on_mock_data_through_the_cli(imagenet_dir, tmp_path):
  result, md = _cli(tmp_path, '--checkpoint', imagenet_dir, '--model', 'resnet_atto',
                    '--suite', ','.join(sets.TFDS_SETS), '--corruptions', 'contrast',
                    '--severities', '2', '--mock', '3', '--image_size', '32', '--batch_size', '8')
  r = result['weights']['checkpoint']
  assert sorted(r['sets']) == sorted(['imagenet', 'imagenet_v2', 'imagenet_real', 'imagenet_a',
                                      'imagenet_r', 'imagenet_sketch', 'imagenet_c/contrast/2'])
  assert all(s['count'] == 3 for s in r['sets'].values()), r['sets']
  assert {'top1', 'top5', 'nll', 'ece'} <= set(r['sets']['imagenet'])
  assert 'real_top1' in r['sets']['imagenet_real']
  assert 'top5' not in r['sets']['imagenet_a']  # restricted top-1 only
  assert r['summary']['imagenet_c']['ce'].keys() == {'contrast'}
  assert 'ImageNet top-1' in md and 'IN-A' in md and 'ReaL' in md


def test_a_missing_set_is_reported_missing_and_the_others_still_run(imagenet_dir, tmp_path):
  empty = tmp_path / 'tfds'
  empty.mkdir()
  result, md = _cli(tmp_path, '--checkpoint', imagenet_dir, '--model', 'resnet_atto',
                    '--suite', 'synthetic,imagenet_r', '--data_dir', str(empty),
                    '--image_size', '32', '--batch_size', '8', '--num_eval', '16')
  r = result['weights']['checkpoint']['sets']
  assert r['synthetic']['count'] == 16
  why = r['imagenet_r']['missing']
  assert 'imagenet_r' in why and str(empty) in why and 'tfds build imagenet_r' in why
  assert 'top1' not in r['imagenet_r'] and 'missing' in md


def test_corruptions_are_deterministic_and_grow_with_severity():
  images, _ = synthetic.make_split(0, 'validation', 4, 32)
  for name in corruptions.NAMES:
    a = corruptions.corrupt(images, name, 3, seed=1)
    assert a.dtype == np.uint8 and a.shape == images.shape
    np.testing.assert_array_equal(a, corruptions.corrupt(images, name, 3, seed=1))
    d = [np.abs(corruptions.corrupt(images, name, s).astype(int) - images).mean() for s in (1, 5)]
    assert d[1] > d[0], name


class Oracle(nnx.Module):
  """A 'correct' teacher: looks each image up by its per-channel mean among the split's."""

  def __init__(self, features, labels):
    self.features = nnx.Param(jnp.asarray(features))
    self.labels = nnx.Variable(jnp.asarray(labels))

  def __call__(self, x, train=False):
    d = jnp.sum((jnp.mean(x, (1, 2))[:, None] - self.features[None]) ** 2, -1)
    return jax.nn.one_hot(self.labels[jnp.argmin(d, -1)], 10) * 10.0, {}


def test_teacher_check_lets_a_correct_teacher_through_and_stops_a_wrong_load():
  mesh = sharding.make_mesh()
  images, labels = synthetic.make_split(0, 'validation', 32, 32)
  batches = list(synthetic.eval_batches(images, labels, batch_size=16))
  graph, state = nnx.split(Oracle(jnp.mean(normalize(images), (1, 2)), labels))
  ok = runner.check_teacher(graph, state, batches, mesh, 10, num_batches=2)
  assert ok['verdict'] == 'ok' and ok['accuracy'] == 1.0 and ok['count'] == 32
  # A deliberately wrong load: the architecture without its trained weights (resnet_atto: a
  # SLaK model compiles far slower on CPU and would test the same thing).
  graph, state = nnx.split(models.create('resnet_atto', num_classes=10, seed=3))
  with pytest.raises(runner.TeacherAtChanceError, match='kernel sizes'):
    runner.check_teacher(graph, state, batches, mesh, 10, num_batches=2, what='resnet_atto')
  assert runner.check_teacher(graph, state, batches, mesh, 10, num_batches=0) == {'verdict': 'skipped'}
