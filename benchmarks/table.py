"""A benchmark result JSON as the markdown table the READMEs show (so their numbers are copied, not typed).

    python benchmarks/table.py benchmarks/results/depthwise_cpu.json
    python benchmarks/table.py benchmarks/results/kd_step_cpu_three_pairs_own_processes.json
    python benchmarks/table.py benchmarks/results/teacher_forward_cpu.json

tests/test_benchmarks.py checks that README.md and benchmarks/README.md hold these tables of the
committed JSON.
"""
from __future__ import annotations

import argparse
import json
from typing import Callable

# Model names as the READMEs print them.
DISPLAY = {'slak_t': 'SLaK-T', 'convnext_t': 'ConvNeXt-T', 'convnext_t_bn': 'ConvNeXt-T',
           'resnet50': 'ResNet-50'}


def _table(header: list[str], rows: list[list[str]]) -> str:
  """Markdown table of `header` and `rows` (lists of cells)."""
  line = lambda cells: '| ' + ' | '.join(cells) + ' |'
  return '\n'.join([line(header), '|' + '---|' * len(header)] + [line(r) for r in rows])


def _name(model: str) -> str:
  return DISPLAY.get(model, model)


def depthwise_table(result: dict) -> str:
  """A depthwise.py result, one row per stage shape and kernel with its batch sizes side by side."""
  groups: dict[tuple, list[dict]] = {}
  for c in result['cases']:
    groups.setdefault((c['stage'], c['hw'], c['c'], c['kernel'], c['kind']), []).append(c)
  batches = ' / '.join(str(c['batch']) for c in next(iter(groups.values())))
  header = ['stage map', 'kernel', 'JAX impl (inference/training)', f'JAX fwd+bwd ms (batch {batches})',
            'torch NCHW fwd+bwd ms', 'ratio fwd+bwd vs NCHW', 'ratio fwd+bwd vs best torch',
            'ratio fwd vs NCHW']
  rows = []
  for (stage, hw, ch, kernel, kind), cases in groups.items():
    per = lambda fmt, key: ' / '.join(fmt.format(c[key]) for c in cases)
    impls = list(dict.fromkeys(c['auto_impl'] for c in cases))  # one entry where the batches agree
    rows.append([f's{stage} {hw}x{hw}x{ch}', f'{kernel} ({kind})', '; '.join(impls),
                 per('{:.1f}', 'jax_fwd_bwd'),
                 per('{:.1f}', 'torch_nchw_fwd_bwd'), per('{:.2f}', 'ratio_fwd_bwd'),
                 per('{:.2f}', 'ratio_vs_best_torch_fwd_bwd'), per('{:.2f}', 'ratio_fwd')])
  return _table(header, rows)


def kd_step_table(result: dict) -> str:
  """A kd_step.py result (with its PyTorch side): images/s, step-time ratio, teacher forward."""
  header = ['teacher -> student', 'JAX img/s', 'PyTorch img/s', 'JAX/PyTorch step time',
            'teacher forward JAX / PyTorch (s)', 'teacher share JAX / PyTorch']
  rows = [[f"{_name(c['teacher'])} -> {_name(c['student'])}", f"{c['jax_images_per_s']:.2f}",
           f"{c['torch_images_per_s']:.2f}", f"**{c['ratio']:.2f}**",
           f"{c['jax_teacher_fwd_s']:.2f} / {c['torch_teacher_fwd_s']:.2f}",
           f"{c['jax_teacher_share']:.2f} / {c['torch_teacher_share']:.2f}"]
          for c in result['cases']]
  return _table(header, rows)


def teacher_forward_table(result: dict) -> str:
  """A teacher_forward.py result: the forward as configs/slak_kd.py runs it, and without depthwise."""
  header = ['teacher', 'JAX, as `configs/slak_kd.py` runs it', 'PyTorch', 'JAX without depthwise',
            'PyTorch without depthwise']
  as_run = lambda c: (f"{c['merged_decom_ms']:.1f} (`merged_decom`)" if 'merged_decom_ms' in c
                      else f"{c['inference_ms']:.1f}")
  rows = [[_name(c['model']), as_run(c), f"{c['torch_inference_ms']:.1f}",
           f"{c['without_depthwise_ms']:.1f}", f"{c['torch_without_depthwise_ms']:.1f}"]
          for c in result['cases']]
  return _table(header, rows)


TABLES: dict[str, Callable[[dict], str]] = {
    'depthwise': depthwise_table, 'kd_step': kd_step_table, 'teacher_forward': teacher_forward_table}


def table(result: dict) -> str:
  """The markdown table of a result JSON of one of TABLES' benchmarks."""
  name = result.get('benchmark')
  if name not in TABLES:
    raise ValueError(f'No table for benchmark {name!r}; tables exist for {sorted(TABLES)}.')
  return TABLES[name](result)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('json_file', help=f'a result JSON of benchmarks/{{{",".join(TABLES)}}}.py')
  a = p.parse_args(argv)
  with open(a.json_file) as f:
    print(table(json.load(f)))


if __name__ == '__main__':
  main()
