"""Shared output of the benchmark scripts: the result JSON to a file and/or stdout."""
from __future__ import annotations

import json
import os
from typing import Any


def emit(result: dict[str, Any], out: str | None, to_stdout: bool) -> None:
  """Writes `result` as indented JSON to `out` (folders created) and prints it when `to_stdout`."""
  text = json.dumps(result, indent=1)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
      f.write(text + '\n')
  if to_stdout:
    print(text)
