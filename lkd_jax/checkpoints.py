"""Orbax CheckpointManager wrapper: periodic/final saves, keep-N, resume from the latest good step.

Only the student's TrainState is saved; the teacher is reloaded from its own checkpoint at every start.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


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


def save(mngr: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> bool:
  """Saves `state` at `step` (asynchronously) if the interval policy or `force` says so."""
  return mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=force)


def restore(mngr: ocp.CheckpointManager, abstract_state: Any, step: int | None = None) -> Any:
  """Restores into the shapes, dtypes and shardings of `abstract_state` (latest step by default)."""
  step = mngr.latest_step() if step is None else step
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
  return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))['state']


def latest_step(directory: str) -> int | None:
  """Latest saved step under `directory`, or None when there is none."""
  if not epath.Path(directory).is_dir():
    return None
  with ocp.CheckpointManager(absolute(directory), item_names=('state',)) as mngr:
    return mngr.latest_step()


def restore_raw(mngr: ocp.CheckpointManager, step: int | None = None) -> dict[str, Any]:
  """The saved state as nested dicts of arrays (no target needed), Variable '.value' levels removed."""
  step = mngr.latest_step() if step is None else step
  raw = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return _strip_value(raw['state'])


def _strip_value(tree: Any) -> Any:
  if isinstance(tree, dict):
    if set(tree) == {'value'}:
      return tree['value']
    return {k: _strip_value(v) for k, v in tree.items()}
  return tree
