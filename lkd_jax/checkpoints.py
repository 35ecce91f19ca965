"""Orbax CheckpointManager wrapper: periodic/final saves, keep-N, resume from the latest good step.

Only the student's TrainState is saved; the teacher is reloaded from its own checkpoint at every start.
An unreadable newest step (empty, truncated, garbled) is renamed to `<step>.corrupt-<time>` beside the
others, which orbax neither lists as a step nor deletes, and the restore falls back to the step before.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import logging as py_logging
import os
import sys
from typing import Any, Callable, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from lkd_jax.errors import SetupError

_MAX_REASON = 240


def manager(directory: str, *, max_to_keep: int = 3, save_every: int | None = None
            ) -> ocp.CheckpointManager:
  """A CheckpointManager under `directory` keeping the last `max_to_keep` steps."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, save_interval_steps=save_every or 1, create=True,
      enable_async_checkpointing=True)
  return ocp.CheckpointManager(absolute(directory), options=options, item_names=('state',))


def absolute(directory: str) -> epath.Path:
  """An absolute local path, or the cloud path (gs://...) as it is: orbax wants absolute paths."""
  path = epath.Path(directory)
  return path if '://' in str(directory) else epath.Path(os.path.abspath(directory))


class CheckpointWriteError(SetupError):
  """A checkpoint could not be written (disk full, permissions); the complete steps are kept."""


def save(mngr: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> bool:
  """Saves `state` at `step` (asynchronously) if the interval policy or `force` says so.

  A failed earlier async save surfaces here (or in `wait`) as one CheckpointWriteError.
  """
  try:
    return mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=force)
  except Exception as e:  # orbax re-raises its writer threads' errors (ValueError, OSError, ...).
    raise _write_error(mngr, e) from None


def wait(mngr: ocp.CheckpointManager) -> None:
  """Blocks until pending async saves are written; a failed one raises CheckpointWriteError."""
  try:
    mngr.wait_until_finished()
  except Exception as e:
    raise _write_error(mngr, e) from None


def _write_error(mngr: ocp.CheckpointManager, error: Exception) -> CheckpointWriteError:
  mngr.reload()
  last = mngr.latest_step()
  kept = (f'the last complete checkpoint, step {last}, is kept' if last is not None else
          'no complete checkpoint was written')
  return CheckpointWriteError(
      f'Writing a checkpoint to {mngr.directory} failed ({_reason(error)}). The run stopped; {kept}. '
      'Free disk space (or fix the permissions) and rerun the same command to resume.')


def restore(mngr: ocp.CheckpointManager, abstract_state: Any, step: int | None = None) -> Any:
  """Restores into the shapes, dtypes and shardings of `abstract_state` (latest readable step by default)."""
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)

  def read(s: int) -> Any:
    try:
      return mngr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))['state']
    except Exception as e:
      if _read_numpy(mngr, s) is None:  # The files are fine: they just don't fit this run's state.
        raise SetupError(
            f'Checkpoint step {s} in {mngr.directory} is readable but does not fit the state this '
            f'run builds ({_reason(e)}). Was the model, optimizer or EMA config changed since it '
            'was saved? Resume with the config.json saved in the workdir, or use a fresh workdir.'
        ) from e
      raise

  return read(step) if step is not None else _restore_latest(mngr, read)


def latest_step(directory: str) -> int | None:
  """Latest saved step under `directory`, or None when there is none."""
  if not epath.Path(directory).is_dir():
    return None
  with ocp.CheckpointManager(absolute(directory), item_names=('state',)) as mngr:
    return mngr.latest_step()


def restore_raw(mngr: ocp.CheckpointManager, step: int | None = None) -> dict[str, Any]:
  """The saved state as nested dicts of arrays (no target needed), Variable '.value' levels removed.

  Arrays keep their saved shardings; on other devices than the saving run's they land on one local device.
  """
  fallback = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def read(s: int) -> Any:
    args = ocp.args.StandardRestore(fallback_sharding=fallback)
    return mngr.restore(s, args=ocp.args.Composite(state=args))['state']

  return _strip_value(read(step) if step is not None else _restore_latest(mngr, read))


def _restore_latest(mngr: ocp.CheckpointManager, read: Callable[[int], Any]) -> Any:
  """`read(step)` of the newest step that reads; unreadable newer steps are moved aside, never deleted."""
  bad = []
  try:
    for step in sorted(mngr.all_steps(), reverse=True):
      result, error = _attempt(read, step)
      # Every process must agree to use or to drop this step. A read failing on some processes only
      # (one bad shard file) may leave the others waiting in orbax's restore barrier until it times out.
      if not _any_process(error is not None):
        return result
      path = _step_path(mngr, step)
      reason = _reason(error, path) if error is not None else 'unreadable on another process'
      moved = _move_aside(path)
      logging.warning('Checkpoint step %d at %s is unreadable (%s); %s. Trying the '
                      'step before it.', step, path, reason, moved)
      bad.append(f'step {step} at {path} ({reason}; {moved})')
  finally:
    if bad:
      _sync('lkd_jax: unreadable checkpoint steps moved aside')
      mngr.reload()  # Forget the moved steps, so that saving them again works.
  raise _no_readable_checkpoint(mngr.directory, bad)


def _no_readable_checkpoint(directory: epath.Path, bad: list[str]) -> SetupError:
  """The one-line error for a checkpoint directory without a readable step."""
  if not bad:
    return SetupError(f'No checkpoint to restore in {directory}.')
  return SetupError(
      f'No readable checkpoint in {directory}: ' + '; '.join(bad) + '. Nothing was deleted. To '
      'train from scratch, use a fresh workdir or move that checkpoints directory away; to resume, '
      'put a good copy of a step directory back there.')


def _attempt(read: Callable[[int], Any], step: int) -> tuple[Any, Exception | None]:
  """(read(step), None), or (None, the error) when the step cannot be read; SetupError passes through."""
  try:
    with _quiet_orphaned_futures():
      return read(step), None
  except SetupError:
    raise
  except Exception as e:  # Orbax and tensorstore raise many types (KeyError, ValueError, OSError).
    return None, e


def _read_numpy(mngr: ocp.CheckpointManager, step: int) -> Exception | None:
  """None if `step` reads as numpy arrays (independent of any target and devices), else the error."""
  try:
    with _quiet_orphaned_futures():
      tree = mngr.item_metadata(step)['state'].tree
      target = jax.tree.map(_numpy_leaf, tree)
      mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  except Exception as e:
    return e
  return None


def _numpy_leaf(meta: Any) -> Any:
  # An unwritten np.empty costs no memory; as a target leaf it makes orbax read into numpy.
  shape, dtype = getattr(meta, 'shape', None), getattr(meta, 'dtype', None)
  return meta if shape is None or dtype is None else np.empty(shape, dtype)


def _any_process(flag: bool) -> bool:
  """True on every process when `flag` is True on any process."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _step_path(mngr: ocp.CheckpointManager, step: int) -> epath.Path:
  """The step directory under orbax's default (unprefixed, unpadded) step names, as `manager` makes them."""
  return epath.Path(mngr.directory) / str(step)


def _move_aside(path: epath.Path) -> str:
  """Renames a bad step directory to `<step>.corrupt-<time>` (on process 0); says where it went."""
  if jax.process_index() != 0:
    return 'process 0 moves it aside'
  try:
    return f'moved it to {_rename_unused(path)}'
  except OSError as e:  # A read-only run directory (someone else's teacher run) stays as it is.
    return f'left it in place, could not move it ({_reason(e)})'


def _sync(name: str) -> None:
  """Waits for all processes (no-op in a single-process run)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _rename_unused(path: epath.Path) -> epath.Path:
  """Renames `path` to a free `<name>.corrupt-<YYYYmmdd-HHMMSS>[-n]` sibling and returns the new path."""
  # No '_' in the name: orbax's legacy step check takes any name ending in '_<digits>' for a step.
  base = f'{path.name}.corrupt-{datetime.datetime.now():%Y%m%d-%H%M%S}'
  target, n = path.parent / base, 0
  while target.exists():
    n += 1
    target = path.parent / f'{base}-{n}'
  path.rename(target)
  return target


def _reason(error: BaseException, path: epath.Path | None = None) -> str:
  """One short line saying what went wrong: no traceback, no tensorstore spec dump."""
  if path is not None and path.is_dir() and not any(path.iterdir()):
    return 'the step directory is empty'
  text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
  text = str(text).split(' [tensorstore_spec', 1)[0].strip()
  text = text.splitlines()[0] if text else ''
  if len(text) > _MAX_REASON:  # Tensorstore chains contexts with ': '; the root cause is last.
    text = '...' + ': '.join(text.split(': ')[-2:])[-_MAX_REASON:]
  return f'{type(error).__name__}: {text}' if text else type(error).__name__


@contextlib.contextmanager
def _quiet_orphaned_futures() -> Iterator[None]:
  """Drops the tracebacks that the sibling reads of a failed restore print after orbax gave up on them."""
  # They are asyncio's 'exception was never retrieved' log records and tensorstore callbacks that find
  # orbax's event loop already closed; the first error, raised here, says all there is to say.
  logger = py_logging.getLogger('asyncio')
  quiet = _DropMessages(('exception was never retrieved',))
  hook = sys.unraisablehook
  logger.addFilter(quiet)
  sys.unraisablehook = functools.partial(_unraisable_unless_loop_closed, hook)
  try:
    yield
  except BaseException:
    gc.collect()  # Orphaned futures log when collected: collect them while the filter is on.
    raise
  finally:
    sys.unraisablehook = hook
    logger.removeFilter(quiet)


def _unraisable_unless_loop_closed(hook: Callable[[Any], None], unraisable: Any) -> None:
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
    hook(unraisable)


class _DropMessages(py_logging.Filter):
  """A logging filter that drops records whose message contains any of `parts`."""

  def __init__(self, parts: tuple[str, ...]):
    super().__init__()
    self.parts = parts

  def filter(self, record: py_logging.LogRecord) -> bool:
    return not any(part in record.getMessage() for part in self.parts)


def _strip_value(tree: Any) -> Any:
  if isinstance(tree, dict):
    if set(tree) == {'value'}:
      return tree['value']
    return {k: _strip_value(v) for k, v in tree.items()}
  return tree
