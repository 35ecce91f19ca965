"""Shared CLI pieces: the orbax log filter that main (and a notebook) adds to absl's handler."""
import logging
import sys
import types

from lkd_jax import cli


def _record(path: str, level: int, name: str = 'absl') -> logging.LogRecord:
  try:
    raise OSError('disk full')
  except OSError:
    exc = sys.exc_info()
  return logging.LogRecord(name, level, path, 1, 'msg', None, exc)


def test_quiet_orbax_drops_orbax_info_and_shortens_its_warnings():
  assert not cli.quiet_orbax(_record('/site-packages/orbax/checkpoint/x.py', logging.INFO))
  warning = _record('/site-packages/orbax/checkpoint/x.py', logging.WARNING)
  assert cli.quiet_orbax(warning) and warning.exc_info is None  # one line, no traceback
  other = _record('/work/lkd_jax/train.py', logging.INFO)
  assert cli.quiet_orbax(other) and other.exc_info is not None
  # 'Task exception was never retrieved' from the event loop of a failed orbax write: one line.
  task = _record('/lib/python3.11/asyncio/base_events.py', logging.ERROR, name='asyncio')
  assert cli.quiet_orbax(task) and task.exc_info is None


def test_quiet_closed_loop_drops_only_the_closed_event_loop_reports():
  seen = []
  hook = cli.quiet_closed_loop(seen.append)
  closed = types.SimpleNamespace(exc_value=RuntimeError('Event loop is closed'))
  other = types.SimpleNamespace(exc_value=RuntimeError('something else'))
  hook(closed)
  hook(other)
  assert seen == [other]
