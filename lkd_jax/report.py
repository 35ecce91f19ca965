"""Teacher / student / distilled comparison: Direct Gain and Effective Gain, as JSON and Markdown;
`--plot OUT.png DIR...`: training curves of run or job directories (lkd_jax/analysis/curves.py);
`--robustness DIR...`: the robustness table of evaluated runs (lkd_jax/evaluate)."""
from __future__ import annotations

import json
import sys
from typing import Any

from etils import epath


def gains(teacher_acc: float, student_acc: float, distilled_acc: float) -> dict[str, float]:
  """Direct Gain = distilled - student; Effective Gain = Direct Gain / teacher accuracy."""
  direct = distilled_acc - student_acc
  return {'direct_gain': direct, 'effective_gain': direct / teacher_acc if teacher_acc else 0.0}


def build(teacher_acc: float, student_acc: float, distilled_acc: float, **extra: Any
          ) -> dict[str, Any]:
  """The report dict: the three accuracies, the two gains and any extra fields (seed, names)."""
  return {'teacher_acc': teacher_acc, 'student_acc': student_acc, 'distilled_acc': distilled_acc,
          **gains(teacher_acc, student_acc, distilled_acc), **extra}


def to_markdown(report: dict[str, Any]) -> str:
  """A small Markdown table of a report (accuracies in %; the corrupted error when evaluated); a
  report with `tables` (a teacher comparison) is its tables."""
  if 'tables' in report:
    return tables_markdown(report['tables']) + f"\nseed {report.get('seed')}\n"
  rows = [('teacher', 'teacher', report.get('teacher', '')),
          ('student (CE)', 'student', report.get('student', '')),
          (f"distilled ({report.get('method', '')})", 'distilled', report.get('student', ''))]
  robust = all(f'{stage}_c_error' in report for _, stage, _ in rows)
  lines = ['| run | model | top-1 (%) |' + (' corrupted error (%) |' if robust else ''),
           '|---|---|---|' + ('---|' if robust else '')]
  lines += [f"| {r} | {m} | {100 * report[f'{stage}_acc']:.2f} |" +
            (f" {100 * report[f'{stage}_c_error']:.2f} |" if robust else '') for r, stage, m in rows]
  lines += ['', f"Direct Gain: {100 * report['direct_gain']:+.2f} points; "
            f"Effective Gain: {report['effective_gain']:+.4f} (seed {report.get('seed')})"]
  return '\n'.join(lines) + '\n'


# A table cell's format: its value is a fraction (pct), a difference of fractions (gain: points),
# an Effective Gain (ratio), a count (steps) or a label (text); None is '-'. Each numeric format is
# (pattern of the mean, scale, decimals of the std).
FORMATS = {'pct': ('{:.2f}', 100.0, 2), 'gain': ('{:+.2f}', 100.0, 2), 'ratio': ('{:+.4f}', 1.0, 4),
           'count': ('{:.0f}', 1.0, 0)}


def format_cell(values: list[Any], fmt: str) -> str:
  """One cell: a label, a number, or mean ± sample std of several (seeds); '-' where missing."""
  values = [v for v in values if v is not None]
  if not values:
    return '-'
  if fmt == 'text':
    return str(values[0])
  pattern, scale, digits = FORMATS[fmt]
  mean, std = _mean_std([scale * v for v in values])
  return pattern.format(mean) + (f' ± {std:.{digits}f}' if len(values) > 1 else '')


def tables_markdown(tables: list[dict[str, Any]], combined: bool = False) -> str:
  """Markdown of report `tables` ({'title', 'columns': [{'name', 'fmt'}], 'rows'}); each cell holds
  one value, or when `combined` (combine_tables) a list of one value per run (mean ± std)."""
  out = []
  for t in tables:
    names, fmts = [c['name'] for c in t['columns']], [c['fmt'] for c in t['columns']]
    out += [f"**{t['title']}**", '', '| ' + ' | '.join(names) + ' |', '|' + '---|' * len(names)]
    for row in t['rows']:
      cells = [format_cell(v if combined else [v], f) for v, f in zip(row, fmts)]
      out.append('| ' + ' | '.join(cells) + ' |')
    out.append('')
  return '\n'.join(out)


def combine_tables(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The tables of several runs (seeds) of one comparison, each cell the list of its values; rows
  are matched by their label cells, tables by title (a table or row some runs lack keeps the rest)."""
  combined: dict[str, dict[str, Any]] = {}
  for rep in reports:
    for t in rep['tables']:
      text = [c['fmt'] == 'text' for c in t['columns']]
      entry = combined.setdefault(t['title'], {'title': t['title'], 'columns': t['columns'],
                                               'rows': {}})
      for row in t['rows']:
        key = tuple(v for v, is_text in zip(row, text) if is_text)
        cells = entry['rows'].setdefault(key, [[] for _ in row])
        for cell, v in zip(cells, row):
          cell.append(v)
  return [{**t, 'rows': list(t['rows'].values())} for t in combined.values()]


def write(report: dict[str, Any], workdir: str) -> None:
  """Writes report.json and report.md into `workdir` (local or gs://)."""
  workdir = epath.Path(workdir)
  (workdir / 'report.json').write_text(json.dumps(report, indent=2, sort_keys=True))
  (workdir / 'report.md').write_text(to_markdown(report))


def _mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
  n = len(values)
  mean = sum(values) / n
  var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
  return mean, var ** 0.5


def summarize(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Groups reports by (teacher, student, method): mean / sample std over seeds of every accuracy and gain."""
  groups: dict[tuple, list[dict[str, Any]]] = {}
  for r in reports:
    groups.setdefault((r.get('teacher', ''), r.get('student', ''), r.get('method', '')), []).append(r)
  rows = []
  for (teacher, student, method), rs in groups.items():
    row = {'teacher': teacher, 'student': student, 'method': method,
           'seeds': sorted(r.get('seed') for r in rs),
           'wins': sum(r['distilled_acc'] > r['student_acc'] for r in rs)}
    for key in ('teacher_acc', 'student_acc', 'distilled_acc', 'direct_gain', 'effective_gain'):
      row[key] = _mean_std([r[key] for r in rs])
    rows.append(row)
  return rows


def summary_markdown(rows: list[dict[str, Any]]) -> str:
  """Markdown table of `summarize` rows: accuracies and Direct Gain in %, mean ± std over seeds."""
  pct = lambda ms: f'{100 * ms[0]:.2f} ± {100 * ms[1]:.2f}'
  lines = ['| teacher | student | method | seeds | teacher top-1 | student top-1 | distilled top-1 '
           '| Direct Gain (points) | Effective Gain | distilled > student |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    eg = r['effective_gain']
    lines.append(f"| {r['teacher']} | {r['student']} | {r['method']} | {len(r['seeds'])} "
                 f"| {pct(r['teacher_acc'])} | {pct(r['student_acc'])} | {pct(r['distilled_acc'])} "
                 f"| {100 * r['direct_gain'][0]:+.2f} ± {100 * r['direct_gain'][1]:.2f} "
                 f"| {eg[0]:+.4f} ± {eg[1]:.4f} | {r['wins']}/{len(r['seeds'])} |")
  return '\n'.join(lines) + '\n'


USAGE = ('usage: python -m lkd_jax.report RUN_DIR_OR_REPORT_JSON [...]   (the table of job directories '
         'holding report.json)\n       python -m lkd_jax.report --plot OUT.png RUN_OR_JOB_DIR [...]   '
         '(training curves)\n       python -m lkd_jax.report --robustness RUN_OR_JOB_DIR [...]   '
         '(clean, corrupted and out-of-distribution accuracy, from eval/eval.json or final_metrics.json)')


def plot(out: str, paths: list[str]) -> None:
  """Writes the training curves of the run (or job) directories in `paths` to the PNG `out`."""
  from lkd_jax.analysis import curves
  try:
    groups = curves.plot(paths, out)
  except ValueError as e:
    raise SystemExit(f'error: {e}\n{USAGE}') from None
  for g in groups:
    print(f'{g.label}: {", ".join(r.path for r in g.runs)}')
  print(f'wrote {out}')


def _plot_args(args: list[str]) -> tuple[str, list[str]] | None:
  """(OUT, run dirs) of `--plot OUT DIR...` or `--plot=OUT DIR...`; None for the table form."""
  flag, _, out = args[0].partition('=') if args else ('', '', '')
  if flag != '--plot':
    return None
  rest = args[1:]
  if not out and rest:
    out, rest = rest[0], rest[1:]
  if not out or not rest:
    raise SystemExit(USAGE)
  return out, rest


# The paper's robustness table (Table 7) and the embedded task's: (column, suite, metric, lower is better).
ROBUSTNESS_COLUMNS = (
    ('ImageNet top-1', 'imagenet', 'top1', False), ('IN-C mCE', 'imagenet_c', 'mce', True),
    ('IN-C mean err', 'imagenet_c', 'mean_error', True), ('IN-A', 'imagenet_a', 'top1', False),
    ('IN-R', 'imagenet_r', 'top1', False), ('Sketch', 'imagenet_sketch', 'top1', False),
    ('V2', 'imagenet_v2', 'top1', False), ('ReaL', 'imagenet_real', 'real_top1', False),
    ('embedded top-1', 'synthetic', 'top1', False),
    ('embedded-C mean err', 'synthetic_c', 'mean_error', True))


def eval_summary(run_dir: str) -> dict[str, Any] | None:
  """A run's raw-weight evaluation summary: RUN/eval/eval.json (python -m lkd_jax.evaluate), else
  the `evals` its training recorded in final_metrics.json; None when it has neither."""
  path = epath.Path(run_dir) / 'eval' / 'eval.json'
  if path.exists():
    return json.loads(path.read_text())['weights']['raw']['summary']
  final = epath.Path(run_dir) / 'final_metrics.json'
  evals = json.loads(final.read_text()).get('evals') if final.exists() else None
  return evals.get('raw') if evals else None


def robustness_rows(paths: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
  """(columns present, rows): per (teacher, student, method) the mean ± sample std over runs (seeds)
  of each robustness metric, from run or job directories."""
  from lkd_jax.analysis import runs
  groups: dict[tuple, list[dict[str, Any]]] = {}
  for run in runs.expand(paths):
    summary = eval_summary(run)
    if summary is None:
      print(f'skipping {run}: no eval/eval.json and no evals in final_metrics.json',
            file=sys.stderr)
      continue
    groups.setdefault(runs.describe(run).key, []).append(summary)
  columns = [c for c in ROBUSTNESS_COLUMNS
             if any(s.get(c[1], {}).get(c[2]) is not None for g in groups.values() for s in g)]
  rows = []
  for (teacher, student, method), summaries in groups.items():
    row = {'run': f'{student} ← {teacher} ({method})' if teacher else f'{student} ({method})',
           'runs': len(summaries)}
    for name, suite, metric, _ in columns:
      values = [s[suite][metric] for s in summaries if s.get(suite, {}).get(metric) is not None]
      row[name] = _mean_std(values) if values else None
    rows.append(row)
  return [c[0] for c in columns], rows


def robustness_markdown(columns: list[str], rows: list[dict[str, Any]]) -> str:
  """The robustness table in %: rows student ← teacher (method), mean ± std over runs."""
  cell = lambda ms: '-' if ms is None else f'{100 * ms[0]:.2f} ± {100 * ms[1]:.2f}'
  lines = ['| run | runs | ' + ' | '.join(columns) + ' |', '|---|---|' + '---|' * len(columns)]
  lines += [f"| {r['run']} | {r['runs']} | " + ' | '.join(cell(r[c]) for c in columns) + ' |'
            for r in rows]
  return '\n'.join(lines) + '\n'


def main(paths: list[str]) -> None:
  """Prints the mean ± std summary of the report.json files (or job directories) in `paths`;
  with `--plot OUT.png` first, plots the training curves of run or job directories instead."""
  plot_args = _plot_args(paths)
  if plot_args:
    plot(*plot_args)
    return
  if paths[:1] == ['--robustness']:
    if not paths[1:]:
      raise SystemExit(USAGE)
    print(robustness_markdown(*robustness_rows(paths[1:])), end='')
    return
  reports = []
  for p in paths:
    path = epath.Path(p)
    path = path / 'report.json' if path.is_dir() else path
    if not path.exists():  # e.g. a job still running among runs/*/
      print(f'skipping {p}: no {path} (the job has not finished)', file=sys.stderr)
      continue
    reports.append(json.loads(path.read_text()))
  if not reports:
    raise SystemExit(USAGE)
  comparisons = [r for r in reports if 'tables' in r]
  if comparisons:
    seeds = sorted(r.get('seed') for r in comparisons)
    print(f'{len(comparisons)} runs (seeds {seeds}): mean ± sample std\n')
    print(tables_markdown(combine_tables(comparisons), combined=True), end='')
  if len(comparisons) < len(reports):
    print(summary_markdown(summarize([r for r in reports if 'tables' not in r])), end='')


if __name__ == '__main__':
  main(sys.argv[1:])
