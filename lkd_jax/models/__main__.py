"""`python -m lkd_jax.models --list`: one line per registered model, name<TAB>params<TAB>GMACs.

GMACs = dense multiply-accumulates of one 224x224 forward (batch 1, eval) counted from the jaxpr
(convolutions and matmuls; the 64-px tiny ViTs are counted at their fixed 64x64 size). Models are
built abstractly (nnx.eval_shape): no parameter memory.
"""
from __future__ import annotations

import argparse
import sys

from flax import nnx

from lkd_jax.models import create, names
from lkd_jax.models.macs import count_macs, count_params


def main(argv: list[str] | None = None) -> int:
  """Entry point; returns the process exit code."""
  p = argparse.ArgumentParser(prog='python -m lkd_jax.models', description=__doc__.split('\n')[0])
  p.add_argument('--list', action='store_true', help='print name<TAB>params<TAB>GMACs per model')
  p.add_argument('--num_classes', type=int, default=1000)
  p.add_argument('names', nargs='*', help='only these models (default: all)')
  a = p.parse_args(argv)
  if not a.list:
    p.print_help()
    return 2
  for name in a.names or names():
    model = nnx.eval_shape(lambda: create(name, num_classes=a.num_classes))
    gmacs = count_macs(name, num_classes=a.num_classes) / 1e9
    print(f'{name}\t{count_params(model)}\t{gmacs:.3f}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
