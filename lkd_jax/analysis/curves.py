"""Training curves from run directories: the trainer's TensorBoard scalars, grouped over seeds, plotted.

The trainer (lkd_jax/train.py) writes `train/*` and `eval/*` scalars with clu's metric_writers, as
TensorBoard tensor summaries in `events.out.tfevents.*` files directly in the run directory (a
resumed run adds a file and logs again from its checkpoint's step: the newest value of a step wins).
"""
from __future__ import annotations

import glob
import os
from typing import Any, NamedTuple

import numpy as np

from lkd_jax.analysis import runs

EVAL_ACCURACY = 'eval/accuracy'
# Every method's loss is its own; the cross-entropy with the batch's targets is comparable across
# methods (each logs it, except nkd_lkkd, which has none).
TRAIN_CE = 'train/ce'


class Series(NamedTuple):
  """One scalar over steps (ascending, unique)."""
  steps: np.ndarray
  values: np.ndarray


class Run(NamedTuple):
  """A run directory's path, what it is and its scalars by tag."""
  path: str
  info: runs.RunInfo
  scalars: dict[str, Series]


class Group(NamedTuple):
  """Runs that share teacher, student and method, under one label."""
  label: str
  runs: list[Run]


def _order(path: str) -> tuple[int, int, str]:
  """(creation time, the writing process's file counter, name) from an event file's name,
  events.out.tfevents.<time>.<host>.<pid>.<counter>.v2 (0 for a field that is not a number)."""
  fields = os.path.basename(path).split('.')
  number = lambda i: int(fields[i]) if len(fields) > 5 and fields[i].isdigit() else 0
  return number(3), number(-2), path


def event_files(run_dir: str) -> list[str]:
  """The run's TensorBoard event files, oldest first."""
  return sorted(glob.glob(os.path.join(run_dir, 'events.out.tfevents.*')), key=_order)


def _scalar(value: Any) -> float | None:
  """A summary value's number: a tensor summary (clu / tf.summary) or a legacy simple_value."""
  from tensorboard.util import tensor_util
  kind = value.WhichOneof('value')
  if kind == 'tensor':
    array = tensor_util.make_ndarray(value.tensor)
    return float(array) if array.size == 1 and np.issubdtype(array.dtype, np.number) else None
  if kind == 'simple_value':
    return float(value.simple_value)
  return None


def read_scalars(run_dir: str) -> dict[str, Series]:
  """Every scalar tag of the run's event files as a Series; a step logged twice keeps its last value."""
  from tensorboard.backend.event_processing import event_file_loader
  points: dict[str, dict[int, float]] = {}
  for path in event_files(run_dir):
    for event in event_file_loader.EventFileLoader(path).Load():
      for value in event.summary.value:
        number = _scalar(value)
        if number is not None and not value.tag.startswith('_hparams_'):
          points.setdefault(value.tag, {})[int(event.step)] = number
  return {tag: Series(np.array(sorted(p)), np.array([p[s] for s in sorted(p)]))
          for tag, p in points.items()}


def read_run(run_dir: str) -> Run:
  """A run directory's info and scalars."""
  return Run(run_dir, runs.describe(run_dir), read_scalars(run_dir))


def group(run_list: list[Run]) -> list[Group]:
  """Runs grouped by (teacher, student, method), in first-seen order, labelled with the seed count."""
  groups: dict[tuple, list[Run]] = {}
  for r in run_list:
    groups.setdefault(r.info.key, []).append(r)
  out = []
  for (teacher, student, method), rs in groups.items():
    name = runs.label(teacher, student, method)
    out.append(Group(name if len(rs) == 1 else f'{name}, {len(rs)} seeds', rs))
  return out


def mean_band(series: list[Series]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """(steps, mean, sample std or None for one series) over the steps every series has."""
  steps = series[0].steps
  for s in series[1:]:
    steps = np.intersect1d(steps, s.steps)
  values = np.stack([s.values[np.searchsorted(s.steps, steps)] for s in series])
  std = values.std(axis=0, ddof=1) if len(series) > 1 else None
  return steps, values.mean(axis=0), std


def panel(groups: list[Group], tag: str, title: str, ylabel: str, scale: float = 1.0
          ) -> dict[str, Any]:
  """A plots.curves_figure panel: one line per group (mean, ± 1 std band over seeds) for `tag`;
  runs without a teacher (baselines) dashed."""
  lines = []
  for g in groups:
    series = [r.scalars[tag] for r in g.runs if tag in r.scalars and r.scalars[tag].steps.size]
    if not series:
      continue
    steps, mean, std = mean_band(series)
    band = None if std is None else (scale * (mean - std), scale * (mean + std))
    lines.append({'label': g.label, 'x': steps, 'y': scale * mean, 'band': band,
                  'dashed': g.runs[0].info.teacher is None})
  return {'title': title, 'ylabel': ylabel, 'lines': lines}


def common_steps_per_epoch(run_list: list[Run]) -> float | None:
  """The runs' steps per epoch when all know it and agree, else None."""
  values = {r.info.steps_per_epoch for r in run_list}
  return values.pop() if len(values) == 1 and None not in values else None


def plot(paths: list[str], out: str) -> list[Group]:
  """Eval top-1 and train cross-entropy against step for the runs in `paths` (job dirs expand to their
  stages), one line per group; writes the PNG `out` and returns the groups."""
  from lkd_jax.analysis import plots
  run_list = [read_run(p) for p in runs.expand(paths)]
  if not run_list:
    raise ValueError('no run directories to plot')
  groups = group(run_list)
  panels = [panel(groups, EVAL_ACCURACY, 'eval top-1', 'top-1 (%)', scale=100.0),
            panel(groups, TRAIN_CE, 'train cross-entropy', 'CE')]
  plots.curves_figure(panels, out, epoch_axis=common_steps_per_epoch(run_list))
  return groups
