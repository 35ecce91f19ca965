"""eval.json and eval.md: every number of an evaluation, its model, checkpoint, weights and data."""
from __future__ import annotations

import json
from typing import Any, Mapping

from etils import epath

# The headline columns, in the paper's robustness-table order, then the embedded task's.
HEADLINE = (('imagenet', 'top1', 'ImageNet top-1'), ('imagenet_c', 'mce', 'IN-C mCE'),
            ('imagenet_c', 'mean_error', 'IN-C mean err'), ('imagenet_a', 'top1', 'IN-A'),
            ('imagenet_r', 'top1', 'IN-R'), ('imagenet_sketch', 'top1', 'Sketch'),
            ('imagenet_v2', 'top1', 'V2'), ('imagenet_real', 'real_top1', 'ReaL'),
            ('synthetic', 'top1', 'synthetic top-1'),
            ('synthetic_c', 'mean_error', 'synthetic-C mean err'),
            ('imagenet', 'agreement', 'ImageNet agreement'),
            ('synthetic', 'agreement', 'synthetic agreement'))


def headline(summary: dict[str, Any]) -> dict[str, float | str | None]:
  """{column title: value} of a summary's suites (values as fractions; 'missing' for a missing set)."""
  out = {}
  for group, key, title in HEADLINE:
    if group not in summary:
      continue
    r = summary[group]
    if key in r or 'missing' in r:
      out[title] = r.get(key, 'missing')
  return out


def _pct(v: Any) -> str:
  if isinstance(v, str) or v is None:
    return v or '-'
  return f'{100 * v:.2f}'


def _num(v: Any, fmt: str = '.4f') -> str:
  return '-' if v is None else format(v, fmt)


def headline_table(summaries: Mapping[str, dict[str, Any]], first: str = 'weights') -> str:
  """Markdown: one row per labelled summary (runner.summarize's form), the headline columns any of
  them has, in %; `first` titles the label column."""
  heads = {label: headline(s) for label, s in summaries.items()}
  titles = list(dict.fromkeys(t for h in heads.values() for t in h))
  lines = [f'| {first} | ' + ' | '.join(titles) + ' |', '|---' * (len(titles) + 1) + '|']
  lines += [f'| {label} | ' + ' | '.join(_pct(h.get(t)) for t in titles) + ' |'
            for label, h in heads.items()]
  return '\n'.join(lines) + '\n'


def to_markdown(result: dict[str, Any]) -> str:
  """The headline table (one row per weights), every set's metrics and the corruption tables."""
  weights = result['weights']
  lines = [f"# {result['model']} ({result['source'].get('kind')}: {result['source'].get('path')})",
           '', 'Percentages; mCE in % of AlexNet\'s error (lower is better).', '',
           headline_table({label: w['summary'] for label, w in weights.items()}).rstrip('\n')]
  for label, w in weights.items():
    lines += ['', f'## {label} weights: every set', '',
              '| set | images | top-1 | top-5 | NLL | ECE | ReaL | agreement | KL(t‖s) |',
              '|---|---|---|---|---|---|---|---|---|']
    for key, r in w['sets'].items():
      if 'missing' in r:
        lines.append(f'| {key} | missing: {r["missing"].splitlines()[0]} |||||||| ')
        continue
      lines.append(f"| {key} | {r['count']} | {_pct(r['top1'])} | {_pct(r.get('top5'))} "
                   f"| {_num(r.get('nll'))} | {_pct(r.get('ece'))} | {_pct(r.get('real_top1'))} "
                   f"| {_pct(r.get('agreement'))} | {_num(r.get('kl'))} |")
    for group, s in w['summary'].items():
      if 'error' in s:
        lines += ['', *_corruption_table(group, s, w['sets'])]
  return '\n'.join(lines) + '\n'


def _corruption_table(group: str, s: dict[str, Any], set_results: dict[str, Any]) -> list[str]:
  sevs = sorted({int(k.split('/')[2]) for k in set_results if k.startswith(group + '/')
                 and 'missing' not in set_results[k]})
  lines = [f'{group}: top-1 error (%) per corruption and severity; CE = error / AlexNet\'s (%)', '',
           '| corruption | ' + ' | '.join(f's{v}' for v in sevs) + ' | mean | CE |',
           '|---' * (len(sevs) + 3) + '|']
  for name, mean in s['error'].items():
    row = [_pct(1 - set_results[f'{group}/{name}/{v}']['top1'])
           if f'{group}/{name}/{v}' in set_results and 'missing' not in set_results[f'{group}/{name}/{v}']
           else '-' for v in sevs]
    lines.append(f'| {name} | ' + ' | '.join(row) + f' | {_pct(mean)} | {_pct(s["ce"].get(name))} |')
  mce = f"mCE {_pct(s['mce'])}" if s['ce'] else '-'
  lines.append(f"| **all** | {' | '.join('' for _ in sevs)} | {_pct(s['mean_error'])} | {mce} |")
  return lines


def write(result: dict[str, Any], out_dir: str) -> None:
  """Writes eval.json and eval.md into out_dir."""
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / 'eval.json').write_text(json.dumps(result, indent=2, sort_keys=True, default=str))
  (out / 'eval.md').write_text(to_markdown(result))
