"""Teacher / student / distilled comparison: Direct Gain and Effective Gain, as JSON and Markdown."""
from __future__ import annotations

import json
import os
from typing import Any


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
  """A small Markdown table of a report (accuracies in %)."""
  rows = [('teacher', report.get('teacher', ''), report['teacher_acc']),
          ('student (CE)', report.get('student', ''), report['student_acc']),
          (f"distilled ({report.get('method', '')})", report.get('student', ''),
           report['distilled_acc'])]
  lines = ['| run | model | top-1 (%) |', '|---|---|---|']
  lines += [f'| {r} | {m} | {100 * a:.2f} |' for r, m, a in rows]
  lines += ['', f"Direct Gain: {100 * report['direct_gain']:+.2f} points; "
            f"Effective Gain: {report['effective_gain']:+.4f} (seed {report.get('seed')})"]
  return '\n'.join(lines) + '\n'


def write(report: dict[str, Any], workdir: str) -> None:
  """Writes report.json and report.md into `workdir`."""
  with open(os.path.join(workdir, 'report.json'), 'w') as f:
    json.dump(report, f, indent=2, sort_keys=True)
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(to_markdown(report))
