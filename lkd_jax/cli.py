"""Argument types and log filtering shared by the command-line tools (main, convert, evaluate, erf)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable


def json_object(text: str) -> dict:
  """argparse type: a JSON object, e.g. model keyword arguments '{"kernel_size": [31, 29, 27, 13, 5]}'."""
  try:
    value = json.loads(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(f'not JSON ({e}): {text}') from None
  if not isinstance(value, dict):
    raise argparse.ArgumentTypeError(
        f'want a JSON object such as {{"kernel_size": [31, 29, 27, 13, 5]}}, got {text}')
  return value


def quiet_orbax(record: logging.LogRecord) -> bool:
  """A logging filter keeping orbax's warnings and errors, and those of the asyncio loops its writers
  run on, without tracebacks (orbax's info lines dropped): a writer's failure is raised again in the
  main thread, where it is reported (as one line naming the fix). main adds it to absl's handler; so
  can a notebook."""
  if '/orbax/' not in record.pathname and record.name != 'asyncio':
    return True
  record.exc_info, record.exc_text = None, None
  return record.levelno >= logging.WARNING


def quiet_closed_loop(hook: Callable = sys.__unraisablehook__) -> Callable:
  """A sys.unraisablehook dropping 'Event loop is closed' RuntimeErrors and passing the rest to `hook`.

  After one async checkpoint write fails (disk full), orbax closes its event loop while tensorstore's
  other writes are still pending; each of them then reports this error as unraisable, with a
  traceback that would bury the one-line error naming the fix.
  """
  def unraisablehook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
      hook(unraisable)
  return unraisablehook
