"""Argument types shared by the command-line tools (convert, evaluate, erf)."""
from __future__ import annotations

import argparse
import json


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
