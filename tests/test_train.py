"""End-to-end runs: kill-and-resume is bitwise exact, non-finite loss stops cleanly, bad input fails early."""
import os

import jax
import numpy as np
import pytest

from lkd_jax import checkpoints, sharding, train
from lkd_jax import data as data_lib
from tests.conftest import tiny_run_config


def _params(workdir):
  with checkpoints.manager(os.path.join(workdir, 'checkpoints')) as mngr:
    return mngr.latest_step(), checkpoints.restore_raw(mngr)


@pytest.mark.heavy
def test_kill_and_resume_is_bitwise_equal(tmp_path, monkeypatch):
  cfg = tiny_run_config(ema_decay=0.9, **{'model.kwargs': {'drop_path_rate': 0.2}})
  full = train.train_and_evaluate(cfg, str(tmp_path / 'full'))

  real_build = data_lib.build

  def build_then_die(c):
    ds = real_build(c)
    def train_iter(start):
      it = ds.train(start)
      # Batches for steps start+1..4 plus the ones the device prefetcher holds ahead; its next pull
      # (for step 5) "kills" the process after step 4.
      for _ in range(4 - start + sharding.DEVICE_PREFETCH):
        yield next(it)
      raise KeyboardInterrupt('simulated kill after step 4')
    return ds._replace(train=train_iter)

  monkeypatch.setattr(data_lib, 'build', build_then_die)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(cfg, str(tmp_path / 'cut'))
  assert _params(str(tmp_path / 'cut'))[0] == 3  # steps 4.. were lost, step 3 kept
  monkeypatch.setattr(data_lib, 'build', real_build)
  resumed = train.train_and_evaluate(cfg, str(tmp_path / 'cut'))

  step_a, a = _params(str(tmp_path / 'full'))
  step_b, b = _params(str(tmp_path / 'cut'))
  assert step_a == step_b == 6
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 10
  for x, y in zip(leaves_a, leaves_b):
    assert np.array_equal(np.asarray(x), np.asarray(y))
  assert full['accuracy'] == resumed['accuracy'] and full['ema_accuracy'] == resumed['ema_accuracy']


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  cfg = tiny_run_config(checkpoint_every=1, total_steps=20,
                        **{'optim.lr': 1e12, 'optim.warmup_steps': 0, 'optim.weight_decay': 0.0})
  with pytest.raises(FloatingPointError, match=r'Non-finite .* at step \d+') as e:
    train.train_and_evaluate(cfg, str(tmp_path))
  bad_step = int(str(e.value).split('at step ')[1].split(' ')[0])
  step, raw = _params(str(tmp_path))
  assert step is not None and step < bad_step
  assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(raw['params']))


@pytest.mark.parametrize('override, message', [
    ({'model.name': 'resnet5000'}, 'Unknown model'),
    ({'method': 'telepathy'}, 'Unknown method'),
    ({'method': 'kd'}, 'needs a teacher'),
])
def test_bad_config_fails_before_writing_anything(tmp_path, override, message):
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(tiny_run_config(**override), str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_target_accuracy_ends_training_at_the_first_eval_reaching_it_and_on_resume(tmp_path):
  workdir = str(tmp_path / 'run')
  cfg = tiny_run_config(eval_every=2, target_accuracy=0.01)  # any eval above 1% top-1
  result = train.train_and_evaluate(cfg, workdir)
  assert result['step'] == 2 and result['accuracy'] >= 0.01
  assert _params(workdir)[0] == 2
  # Killed after the stopping checkpoint, before the record: the resumed run ends at step 2 too.
  os.remove(os.path.join(workdir, 'final_metrics.json'))
  again = train.train_and_evaluate(cfg, workdir)
  assert again['step'] == 2 and again['accuracy'] == result['accuracy']
  assert _params(workdir)[0] == 2


def test_target_accuracy_needs_periodic_evaluation(tmp_path):
  with pytest.raises(ValueError, match='target_accuracy=0.5 .* needs periodic evaluation'):
    train.train_and_evaluate(tiny_run_config(target_accuracy=0.5), str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()
