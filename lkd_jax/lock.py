"""One writer per workdir: a lock file naming its holder (host, pid, start time), stale locks detected.

A local workdir is locked with an exclusive create (`O_CREAT | O_EXCL`), atomic on POSIX file
systems including NFS v3+. A cloud workdir (gs://...) has no atomic create through `etils.epath`,
so there the check-then-write is best effort. Only process 0 of a multi-process job takes the lock;
the other processes learn its outcome through a broadcast, so all of them stop or all go on.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Any, Iterator

import jax
from absl import logging
from etils import epath

from lkd_jax.errors import SetupError

LOCK_FILE = 'lkd_jax.lock'


class WorkdirLocked(SetupError):
  """Another live process holds the workdir's lock."""


def _holder() -> dict[str, Any]:
  return {'host': socket.gethostname(), 'pid': os.getpid(),
          'started': time.strftime('%Y-%m-%d %H:%M:%S %Z'), 'processes': jax.process_count()}


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user.
    return True
  return True


def _is_stale(holder: dict[str, Any]) -> bool:
  """A holder on this host whose pid is gone is stale; one on another host cannot be checked."""
  return holder.get('host') == socket.gethostname() and not _alive(int(holder.get('pid', -1)))


def _read(path: epath.Path) -> dict[str, Any]:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}  # a holder killed between create and write: treated as stale below.


def _try_create(path: epath.Path, text: str) -> bool:
  if '://' in str(path):
    if path.exists():
      return False
    path.write_text(text)
    return True
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, 'w') as f:
    f.write(text)
  return True


def acquire(workdir: str) -> epath.Path | None:
  """Creates workdir/lkd_jax.lock for this process (None if it already holds it); raises WorkdirLocked
  if a live holder has it."""
  path = epath.Path(workdir) / LOCK_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  me = _holder()
  for _ in range(2):  # a second try after removing a stale lock.
    if _try_create(path, json.dumps(me)):
      return path
    holder = _read(path)
    if holder.get('host') == me['host'] and holder.get('pid') == me['pid']:
      return None  # held already by an outer block of this process, which releases it.
    if not holder or _is_stale(holder):
      logging.warning('Removing the stale lock %s (holder %s is not running).', path, holder)
      path.unlink(missing_ok=True)
      continue
    raise WorkdirLocked(
        f'{workdir} is in use by another run: host {holder.get("host")}, pid {holder.get("pid")}, '
        f'started {holder.get("started")}. Wait for it to finish or use another --workdir; if '
        f'that process is gone (e.g. its host died), delete {path}.')
  raise WorkdirLocked(f'Could not take the lock {path}; another process keeps creating it.')


def release(path: epath.Path) -> None:
  """Removes the lock file if this process still holds it."""
  holder = _read(path)
  if holder.get('host') == socket.gethostname() and holder.get('pid') == os.getpid():
    path.unlink(missing_ok=True)


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds the workdir's lock for the block: process 0 takes it, every process agrees on the outcome."""
  path, error = None, None
  if jax.process_index() == 0:
    try:
      path = acquire(workdir)
    except WorkdirLocked as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    ok = multihost_utils.broadcast_one_to_all(jax.numpy.int32(error is None))
    if not int(ok) and error is None:
      error = WorkdirLocked(f'{workdir} is in use by another run (process 0 could not take its lock).')
  if error is not None:
    raise error
  try:
    yield
  finally:
    if path is not None:
      release(path)
