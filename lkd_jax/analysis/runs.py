"""What a run directory is, read from its record (config.json, final_metrics.json): for titles and groups."""
from __future__ import annotations

import os
from typing import Any, NamedTuple

from lkd_jax import rundir


class RunInfo(NamedTuple):
  """A run's teacher (None without one), student, method, seed and steps per epoch (None if unknown)."""
  teacher: str | None
  student: str
  method: str
  seed: int | None
  steps_per_epoch: float | None

  @property
  def key(self) -> tuple[str | None, str, str]:
    """Runs with the same key differ only by seed (or other settings): one group of a plot."""
    return self.teacher, self.student, self.method


def label(teacher: str | None, student: str, method: str) -> str:
  """'teacher → student (method)', or 'student (method)' without a teacher."""
  return f'{teacher} → {student} ({method})' if teacher else f'{student} ({method})'


def _teacher(config: dict[str, Any], final: dict[str, Any] | None) -> str | None:
  """The teacher's model: the one final_metrics.json records as loaded, else the configured one
  when the method uses a teacher (a CE run's config still names one: ignored)."""
  if final and isinstance(final.get('teacher'), dict):
    return final['teacher'].get('model')
  from lkd_jax.distill import methods
  try:
    needs = methods.get(config.get('method', 'ce')).needs_teacher
  except ValueError:
    needs = bool(config.get('teacher', {}).get('checkpoint'))
  return (config.get('teacher', {}).get('name') or None) if needs else None


def _steps_per_epoch(config: dict[str, Any], final: dict[str, Any] | None) -> float | None:
  num_train = config.get('data', {}).get('num_train', 0)
  batch = config.get('batch_size', 0)
  if num_train and batch:
    return num_train / batch
  if final and config.get('total_steps', 0) <= 0 and config.get('epochs', 0) > 0:
    return final.get('step', 0) / config['epochs'] or None
  return None


def describe(run_dir: str) -> RunInfo:
  """The RunInfo of an lkd_jax run directory (ValueError if it has no config.json)."""
  config = rundir.read_config(run_dir)
  if config is None:
    raise ValueError(f'{run_dir} is not a run directory: it has no {rundir.CONFIG_FILE}')
  final = rundir.read_final(run_dir)
  return RunInfo(_teacher(config, final), config.get('model', {}).get('name', '?'),
                 config.get('method', '?'), config.get('seed'), _steps_per_epoch(config, final))


def is_job_dir(path: str) -> bool:
  """Whether `path` is a job directory: its config.json lists `stages`."""
  config = rundir.read_config(path) if os.path.isdir(path) else None
  return bool(config and config.get('stages'))


def expand(paths: list[str]) -> list[str]:
  """Run directories: a job directory becomes its stage directories (those that exist), in order."""
  out = []
  for p in paths:
    if is_job_dir(p):
      out += [os.path.join(p, s) for s in rundir.read_config(p)['stages']
              if os.path.isdir(os.path.join(p, s))]
    else:
      out.append(p)
  return out
