"""A depthwise.py result JSON as benchmarks/README.md's markdown table (so README numbers are copied, not typed).

    python benchmarks/table.py benchmarks/results/depthwise_cpu.json
"""
from __future__ import annotations

import argparse
import json

_HEADER = ('| stage map | kernel | batch | JAX impl (inference/training) | JAX fwd '
           '| torch fwd NCHW / CL | JAX fwd+bwd | torch fwd+bwd NCHW / CL | ratio fwd (vs NCHW) '
           '| ratio fwd+bwd (vs NCHW) | ratio fwd+bwd vs best torch |')


def depthwise_row(c: dict) -> str:
  """One case of benchmarks/depthwise.py as a table row (times in ms, one decimal)."""
  ms = lambda k: f'{c[k]:.1f}'
  cells = [f"s{c['stage']} {c['hw']}x{c['hw']}x{c['c']}", f"{c['kernel']} ({c['kind']})",
           str(c['batch']), c['auto_impl'], ms('jax_fwd'),
           f"{ms('torch_nchw_fwd')} / {ms('torch_channels_last_fwd')}", ms('jax_fwd_bwd'),
           f"{ms('torch_nchw_fwd_bwd')} / {ms('torch_channels_last_fwd_bwd')}",
           f"{c['ratio_fwd']:.2f}", f"{c['ratio_fwd_bwd']:.2f}",
           f"{c['ratio_vs_best_torch_fwd_bwd']:.2f}"]
  return '| ' + ' | '.join(cells) + ' |'


def depthwise_table(result: dict) -> str:
  """The whole table of a depthwise.py result."""
  sep = '|' + '---|' * _HEADER.count(' | ') + '---|'
  return '\n'.join([_HEADER, sep] + [depthwise_row(c) for c in result['cases']])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('json_file', help='a benchmarks/depthwise.py --out file')
  a = p.parse_args(argv)
  with open(a.json_file) as f:
    print(depthwise_table(json.load(f)))


if __name__ == '__main__':
  main()
