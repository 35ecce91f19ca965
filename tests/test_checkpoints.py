"""Checkpoint restore: an unreadable newest step is moved aside, never deleted, and the one before used."""
import glob
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lkd_jax import checkpoints
from lkd_jax.errors import SetupError


def _state(step: int) -> dict:
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  return {'w': jax.device_put(jnp.arange(16.0) + step, sharded),
          'b': {'c': jnp.full((2, 3), step, jnp.int32)}, 'step': jnp.asarray(step, jnp.int32)}


def _save(ckpt_dir: str, steps=(1, 2, 3)) -> None:
  with checkpoints.manager(ckpt_dir) as mngr:
    for s in steps:
      checkpoints.save(mngr, s, _state(s), force=True)


def _empty(step_dir: str) -> None:
  shutil.rmtree(step_dir)
  os.mkdir(step_dir)


def _no_state_item(step_dir: str) -> None:
  shutil.rmtree(os.path.join(step_dir, 'state'))


def _data_files(step_dir: str) -> list[str]:
  files = glob.glob(os.path.join(step_dir, 'state', '**', 'd', '*'), recursive=True)
  assert files
  return files


def _garbage(step_dir: str) -> None:
  for f in _data_files(step_dir):
    with open(f, 'wb') as fh:
      fh.write(b'not a checkpoint' * 4)


def _truncated(step_dir: str) -> None:
  for f in _data_files(step_dir):
    os.truncate(f, 10)


def _truncated_manifest(step_dir: str) -> None:
  for f in glob.glob(os.path.join(step_dir, 'state', '**', 'manifest.ocdbt'), recursive=True):
    os.truncate(f, 5)


CORRUPTIONS = [_empty, _no_state_item, _garbage, _truncated, _truncated_manifest]


def _restore(kind: str, ckpt_dir: str) -> dict:
  with checkpoints.manager(ckpt_dir) as mngr:
    if kind == 'raw':
      return checkpoints.restore_raw(mngr)
    return checkpoints.restore(mngr, _state(0))


def _assert_is_step(tree: dict, step: int) -> None:
  np.testing.assert_array_equal(np.asarray(tree['w']), np.arange(16.0) + step)
  np.testing.assert_array_equal(np.asarray(tree['b']['c']), np.full((2, 3), step))
  assert int(tree['step']) == step


def _moved(ckpt_dir: str, step: int) -> list[str]:
  return glob.glob(os.path.join(ckpt_dir, f'{step}.corrupt-*'))


@pytest.mark.parametrize('kind', ['restore', 'raw'])
@pytest.mark.parametrize('corrupt', CORRUPTIONS, ids=lambda f: f.__name__.strip('_'))
def test_unreadable_newest_step_is_moved_aside_and_previous_restored(
    tmp_path, caplog, capfd, kind, corrupt):
  ckpt_dir = str(tmp_path / 'checkpoints')
  _save(ckpt_dir)
  corrupt(os.path.join(ckpt_dir, '3'))
  with caplog.at_level(logging.WARNING):
    restored = _restore(kind, ckpt_dir)
  _assert_is_step(restored, 2)
  [moved] = _moved(ckpt_dir, 3)
  assert os.path.isdir(moved) and not os.path.exists(os.path.join(ckpt_dir, '3'))
  warning = '\n'.join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
  assert os.path.join(ckpt_dir, '3') in warning and moved in warning
  assert 'Traceback' not in warning and 'Traceback' not in capfd.readouterr().err
  assert checkpoints.latest_step(ckpt_dir) == 2


@pytest.mark.parametrize('kind', ['restore', 'raw'])
def test_only_unreadable_steps_raise_one_setup_error(tmp_path, kind):
  ckpt_dir = str(tmp_path / 'checkpoints')
  _save(ckpt_dir, steps=(1, 2))
  _garbage(os.path.join(ckpt_dir, '2'))
  _empty(os.path.join(ckpt_dir, '1'))
  with pytest.raises(SetupError) as e:
    _restore(kind, ckpt_dir)
  message = str(e.value)
  for step in (1, 2):
    assert f'step {step} at {os.path.join(ckpt_dir, str(step))} (' in message
    assert f'moved it to {_moved(ckpt_dir, step)[0]}' in message
  assert f'No readable checkpoint in {ckpt_dir}:' in message
  assert 'the step directory is empty' in message and 'fresh workdir' in message
  assert 'Traceback' not in message and '\n' not in message and len(message) < 1500
  assert checkpoints.latest_step(ckpt_dir) is None


def test_bad_step_that_cannot_be_moved_is_left_in_place_and_skipped(tmp_path, monkeypatch, caplog):
  ckpt_dir = str(tmp_path / 'checkpoints')
  _save(ckpt_dir, steps=(1, 2))
  _garbage(os.path.join(ckpt_dir, '2'))

  def read_only(path):
    raise PermissionError(13, 'Permission denied', str(path))

  monkeypatch.setattr(checkpoints, '_rename_unused', read_only)
  with caplog.at_level(logging.WARNING):
    _assert_is_step(_restore('raw', ckpt_dir), 1)
  assert 'left it in place, could not move it (PermissionError' in caplog.text
  assert os.path.isdir(os.path.join(ckpt_dir, '2')) and not _moved(ckpt_dir, 2)


def test_moved_step_is_ignored_and_kept_by_later_saves(tmp_path):
  ckpt_dir = str(tmp_path / 'checkpoints')
  _save(ckpt_dir, steps=(1, 2))
  _truncated(os.path.join(ckpt_dir, '2'))
  with checkpoints.manager(ckpt_dir, max_to_keep=1) as mngr:
    _assert_is_step(checkpoints.restore(mngr, _state(0)), 1)
    for s in (2, 3, 4):  # The run goes on and saves step 2 again, then later ones; keep-1 prunes.
      checkpoints.save(mngr, s, _state(s), force=True)
  [moved] = _moved(ckpt_dir, 2)
  assert sorted(os.listdir(ckpt_dir)) == sorted(['4', os.path.basename(moved)])
  assert checkpoints.latest_step(ckpt_dir) == 4
  _assert_is_step(_restore('raw', ckpt_dir), 4)


def test_missing_checkpoint_metadata_still_restores(tmp_path):
  ckpt_dir = str(tmp_path / 'checkpoints')
  _save(ckpt_dir, steps=(1, 2))
  os.remove(os.path.join(ckpt_dir, '2', '_CHECKPOINT_METADATA'))  # orbax reads the step without it
  _assert_is_step(_restore('restore', ckpt_dir), 2)
  _assert_is_step(_restore('raw', ckpt_dir), 2)
  assert not _moved(ckpt_dir, 2)


def test_interrupted_async_save_tmp_dir_is_ignored(tmp_path):
  ckpt_dir = str(tmp_path / 'checkpoints')
  _save(ckpt_dir, steps=(1, 2))
  tmp_dir = os.path.join(ckpt_dir, '3.orbax-checkpoint-tmp-1234567890')
  shutil.copytree(os.path.join(ckpt_dir, '2'), tmp_dir)
  _truncated(tmp_dir)
  assert checkpoints.latest_step(ckpt_dir) == 2
  _assert_is_step(_restore('restore', ckpt_dir), 2)
  assert os.path.isdir(tmp_dir) and not _moved(ckpt_dir, 3)


def test_readable_step_that_does_not_fit_the_state_is_not_moved(tmp_path):
  ckpt_dir = str(tmp_path / 'checkpoints')
  _save(ckpt_dir, steps=(1,))
  other = {'w': jnp.zeros(16), 'extra': jnp.zeros(3)}
  with checkpoints.manager(ckpt_dir) as mngr, pytest.raises(SetupError, match='does not fit') as e:
    checkpoints.restore(mngr, other)
  assert ckpt_dir in str(e.value) and 'Traceback' not in str(e.value)
  assert os.path.isdir(os.path.join(ckpt_dir, '1')) and not _moved(ckpt_dir, 1)


def test_latest_step_of_missing_directory_is_none(tmp_path):
  assert checkpoints.latest_step(str(tmp_path / 'nope')) is None
