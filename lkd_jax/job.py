"""A job chains runs: train the teacher(s), the baseline student(s) (CE) and the distilled student(s),
then report (one teacher/student pair: lkd_jax/report.py; a teacher comparison: lkd_jax/comparison.py)."""
from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
from absl import logging

from lkd_jax import comparison, environment, lock, report, rundir, train
from lkd_jax.errors import SetupError
from lkd_jax.teacher import STAGE_PREFIX

REPORT_FILES = ('report.json', 'report.md')


def run(config: ml_collections.ConfigDict, workdir: str, *, overwrite: bool = False
        ) -> dict[str, Any]:
  """Runs the job (a config with `stages`) or the single run described by `config` in `workdir`.

  `overwrite`: a workdir holding another config's record has it moved aside instead of refusing.
  """
  if config.get('stages'):
    return run_job(config, workdir, overwrite=overwrite)
  return train.train_and_evaluate(config, workdir, overwrite=overwrite)


def stage_config(config: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
  """The run config of one stage: the job config minus job keys, plus the stage's overrides.

  The distilled stage's teacher defaults to the job's own teacher stage (`stage:teacher`), a
  reference resolved against the workdir, so that a moved workdir stays valid.
  """
  cfg = ml_collections.ConfigDict(config.to_dict())
  overrides = cfg.stage_overrides[stage].to_dict()
  del cfg['stages'], cfg['stage_overrides']
  cfg.update_from_flattened_dict(rundir.flatten(overrides))
  if stage == 'distilled' and not cfg.teacher.checkpoint:
    cfg.teacher.checkpoint = f'{STAGE_PREFIX}teacher'
  return cfg


def corruption_errors(results: dict[str, dict[str, Any]]) -> dict[str, float]:
  """{'<stage>_c_error': mean top-1 error over the embedded corruption suite} of stages that ran it."""
  out = {}
  for stage, r in results.items():
    c = r.get('evals', {}).get('raw', {}).get('synthetic_c', {})
    if c.get('mean_error') is not None:
      out[f'{stage}_c_error'] = c['mean_error']
  return out


def plan(config: ml_collections.ConfigDict, workdir: str) -> tuple[dict[str, Any], list[str]]:
  """Every stage's config, validated, and the stages whose record belongs to another config.

  Reads, never writes: a bad stage anywhere in the job fails here, before the first one trains.
  """
  cfgs, mismatches = {}, []
  for i, stage in enumerate(config.stages):
    stage_dir = os.path.join(workdir, stage)
    try:
      cfg, _ = train.validate(stage_config(config, stage), stage_dir,
                              pending_stages=tuple(config.stages[:i]))
    except ValueError as e:
      raise SetupError(f'stage {stage!r}: {e}') from None
    cfgs[stage] = cfg
    try:
      rundir.inspect(cfg, stage_dir)
    except rundir.StageMismatch as e:
      mismatches.append((stage, str(e)))
  if config.get('comparison'):
    comparison.roles(cfgs)
  return cfgs, mismatches


def run_job(config: ml_collections.ConfigDict, workdir: str, *, overwrite: bool = False
            ) -> dict[str, Any]:
  """Runs each stage in workdir/<stage> (a finished one is read back, a partial one resumed), then reports.

  A stage whose record belongs to another config stops the job before anything trains, unless
  `overwrite`, which moves that stage (and the job's report) aside to workdir/replaced/<time>/.
  """
  cfgs, mismatches = plan(config, workdir)
  if mismatches and not overwrite:
    raise rundir.StageMismatch('\n'.join(f'stage {s!r}: {m}' for s, m in mismatches))
  results = {}
  with lock.hold(workdir):
    if mismatches:
      rundir.move_aside(workdir, [s for s, _ in mismatches] + [*REPORT_FILES, rundir.CONFIG_FILE])
    rundir.write_config(config, workdir)
    for stage in config.stages:
      logging.info('=== stage %s: model %s, method %s ===', stage, cfgs[stage].model.name,
                   cfgs[stage].method)
      results[stage] = train.train_and_evaluate(cfgs[stage], os.path.join(workdir, stage))
    if config.get('comparison'):
      rep = comparison.build(config, cfgs, results, workdir, environment=environment.describe())
    else:
      rep = report.build(results['teacher']['accuracy'], results['student']['accuracy'],
                         results['distilled']['accuracy'], seed=config.seed,
                         environment=environment.describe(),
                         teacher=cfgs['teacher'].model.name, student=cfgs['student'].model.name,
                         method=cfgs['distilled'].method, **corruption_errors(results))
    if jax.process_index() == 0:
      report.write(rep, workdir)
  print(report.to_markdown(rep), flush=True)
  return rep
