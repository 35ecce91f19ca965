"""Shared output of the benchmark scripts: the result JSON to a file and/or stdout."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from lkd_jax.environment import cpu_isa, cpu_model  # noqa: E402  (re-exported for the scripts)


def emit(result: dict[str, Any], out: str | None, to_stdout: bool) -> None:
  """Writes `result` as indented JSON to `out` (folders created) and prints it when `to_stdout`.

  Strict JSON: a NaN or infinity raises here (it is a bug in the script) rather than reaching a
  file that jq and other strict readers refuse."""
  text = json.dumps(result, indent=1, allow_nan=False)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
      f.write(text + '\n')
  if to_stdout:
    print(text)


def add_output_args(p: argparse.ArgumentParser) -> None:
  """--json (print the result) and --out (write it), as `emit` takes them."""
  p.add_argument('--json', action='store_true', help='print the result JSON to stdout')
  p.add_argument('--out', default=None, help='also write the JSON here')


def device_fields() -> dict[str, Any]:
  """`device` (JAX's first device, and the host CPU model and core count), `gpu_note` and the
  `xla_compiler_options` every jit of the run used, for a result."""
  import jax  # the input-pipeline benchmark imports this module without needing jax's devices.
  from lkd_jax.kernels import xla_options
  d = jax.devices()[0]
  return dict(device=f'{d.device_kind} ({jax.default_backend()}); host {cpu_model()} '
                     f'({cpu_isa()}), {os.cpu_count()} cores',
              gpu_note='no accelerator lent to this session: CPU only'
              if jax.default_backend() == 'cpu' else None,
              xla_compiler_options=xla_options.compiler_options())
