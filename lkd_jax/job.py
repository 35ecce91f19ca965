"""A job chains runs: train the teacher, the baseline student (CE) and the distilled student, then report."""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath

from lkd_jax import environment, report, train


def stage_config(config: ml_collections.ConfigDict, stage: str, workdir: str
                 ) -> ml_collections.ConfigDict:
  """The run config of one stage: the job config minus job keys, plus the stage's overrides."""
  cfg = ml_collections.ConfigDict(config.to_dict())
  overrides = cfg.stage_overrides[stage].to_dict()
  del cfg['stages'], cfg['stage_overrides']
  cfg.update_from_flattened_dict(_flatten(overrides))
  if stage == 'distilled' and not cfg.teacher.checkpoint:
    cfg.teacher.checkpoint = os.path.join(workdir, 'teacher')
  return cfg


def _flatten(d: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def finished_result(cfg: ml_collections.ConfigDict, stage_dir: str) -> dict[str, Any] | None:
  """The final metrics of a stage that already ran to its end with this very config, else None."""
  path = epath.Path(stage_dir) / 'final_metrics.json'
  if not path.exists():
    return None
  result = json.loads(path.read_text())
  if result.get('config_digest') != train.config_digest(cfg):
    return None
  logging.info('Stage in %s already finished with this config: reading %s.', stage_dir, path)
  return result


def run_job(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs each stage in workdir/<stage> (a finished one is read back, a partial one resumed), then reports."""
  train.write_config(config, workdir)
  results, cfgs = {}, {}
  for stage in config.stages:
    cfgs[stage] = stage_config(config, stage, workdir)
    logging.info('=== stage %s: model %s, method %s ===', stage, cfgs[stage].model.name,
                 cfgs[stage].method)
    stage_dir = os.path.join(workdir, stage)
    results[stage] = (finished_result(cfgs[stage], stage_dir)
                      or train.train_and_evaluate(cfgs[stage], stage_dir))
  rep = report.build(results['teacher']['accuracy'], results['student']['accuracy'],
                     results['distilled']['accuracy'], seed=config.seed,
                     environment=environment.describe(),
                     teacher=cfgs['teacher'].model.name, student=cfgs['student'].model.name,
                     method=cfgs['distilled'].method)
  if jax.process_index() == 0:
    report.write(rep, workdir)
  print(report.to_markdown(rep), flush=True)
  return rep
