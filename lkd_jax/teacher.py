"""The frozen teacher: where its checkpoint is, whether it may be used, loading it once, its record.

`teacher.checkpoint` is an lkd_jax run directory, a converted directory (python -m lkd_jax.convert)
or an official .pth/.npz/.safetensors file. Inside a job the teacher trained by an earlier stage is
named `stage:<stage>` and resolved against the job's workdir, so a moved workdir stays valid.
A run directory is accepted as a teacher only when it finished (final_metrics.json at its last
checkpoint step), unless `teacher.allow_partial` is set.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import ml_collections
from etils import epath
from flax import nnx

from lkd_jax import checkpoints, models, rundir
from lkd_jax import step as step_lib
from lkd_jax.errors import SetupError
from lkd_jax.kernels import Kernels
from lkd_jax.models.slak import merge_large_kernels

STAGE_PREFIX = 'stage:'
CHECKPOINT_SUFFIXES = ('.pth', '.pt', '.bin', '.tar', '.ckpt', '.npz', '.safetensors')


def resolve_path(checkpoint: str, workdir: str) -> str:
  """The teacher checkpoint's path: `stage:<name>` is the job's stage <name> beside `workdir`."""
  if checkpoint.startswith(STAGE_PREFIX):
    job_dir = os.path.dirname(os.path.normpath(os.path.abspath(workdir)))
    return os.path.join(job_dir, checkpoint[len(STAGE_PREFIX):])
  return checkpoint


def is_run_dir(path: str) -> bool:
  """Whether `path` is an lkd_jax run directory (config.json + checkpoints/)."""
  p = epath.Path(path)
  return (p / rundir.CONFIG_FILE).exists() and (p / 'checkpoints').is_dir()


def check(config: ml_collections.ConfigDict, workdir: str, pending_stages: tuple[str, ...] = ()
          ) -> None:
  """Raises SetupError unless the teacher checkpoint exists and may be used (reads no weights).

  `pending_stages`: job stages that run before this one, so a `stage:<name>` teacher need not exist yet.
  """
  ckpt = config.teacher.checkpoint
  if not ckpt:
    raise SetupError('teacher.checkpoint is empty: name an lkd_jax run directory, a converted '
                     'directory (python -m lkd_jax.convert) or a .pth/.npz/.safetensors file.')
  if ckpt.startswith(STAGE_PREFIX):
    name = ckpt[len(STAGE_PREFIX):]
    if name in pending_stages:
      return
    if not epath.Path(resolve_path(ckpt, workdir)).exists():
      raise SetupError(f'teacher.checkpoint={ckpt!r}: the job has no stage {name!r} before this '
                       f'one and {resolve_path(ckpt, workdir)} does not exist.')
  path = resolve_path(ckpt, workdir)
  p = epath.Path(path)
  if not p.exists():
    raise SetupError(f'Teacher checkpoint {path} does not exist. Set teacher.checkpoint to an '
                     'lkd_jax run directory, a converted directory or a .pth/.npz/.safetensors file.')
  if is_run_dir(path):
    _check_run_dir(path, config)
  else:
    _check_suffix(p, 'Teacher checkpoint')


def _check_suffix(p: epath.Path, what: str) -> None:
  if p.is_file() and p.suffix.lower() not in CHECKPOINT_SUFFIXES:
    raise SetupError(f'{what} {p}: unknown file type {p.suffix!r}; want one of '
                     f'{", ".join(CHECKPOINT_SUFFIXES)}, a converted directory or a run directory.')


def _check_run_dir(path: str, config: ml_collections.ConfigDict) -> None:
  stored = rundir.read_config(path) or {}
  name = stored.get('model', {}).get('name')
  if name != config.teacher.name:
    raise SetupError(f'Teacher run {path} trained model {name!r}, but teacher.name is '
                     f'{config.teacher.name!r}; set teacher.name={name}.')
  if config.teacher.get('allow_partial', False):
    return
  final = rundir.read_final(path)
  last = checkpoints.latest_step(os.path.join(path, 'checkpoints'))
  if final is None or final.get('step') != last:
    state = ('has no final_metrics.json' if final is None else
             f'finished at step {final.get("step")} but its last checkpoint is step {last}')
    raise SetupError(f'Teacher run {path} is not finished: it {state} (last checkpoint: step '
                     f'{last}). Finish it (rerun its command), or set teacher.allow_partial=True '
                     'to distil from its last checkpoint anyway.')


def load(config: ml_collections.ConfigDict, workdir: str, num_classes: int, kernels: Kernels
         ) -> tuple[Any, Any, dict[str, Any]]:
  """(graphdef, state in teacher.dtype, source) of the frozen teacher; `source` records what was loaded."""
  check(config, workdir)
  teacher, source = load_model(resolve_path(config.teacher.checkpoint, workdir), config.teacher.name,
                               num_classes, inference_form=config.teacher.inference_form,
                               kernels=kernels, **config.teacher.kwargs)
  return (*freeze(teacher, config.teacher.dtype), {'checkpoint': config.teacher.checkpoint, **source})


def freeze(teacher: nnx.Module, dtype: Any) -> tuple[Any, Any]:
  """(graphdef, state in `dtype`) of a teacher in its inference form: the step's frozen-teacher form."""
  graph, state = nnx.split(teacher)
  return graph, step_lib.cast_floats(state, dtype)


def load_run_model(run_dir: str, kernels: Kernels) -> tuple[nnx.Module, int]:
  """The trained student of an lkd_jax run directory (its latest checkpoint), computing with
  `kernels`, and that step."""
  cfg = ml_collections.ConfigDict(json.loads((epath.Path(run_dir) / rundir.CONFIG_FILE).read_text()))
  model = models.create(cfg.model.name, num_classes=cfg.num_classes, kernels=kernels,
                        **cfg.model.kwargs)
  graph, params, batch_stats, rest = step_lib.split_student(model)
  with checkpoints.manager(os.path.join(run_dir, 'checkpoints')) as mngr:
    raw = checkpoints.restore_raw(mngr)
    step = mngr.latest_step()  # after restore: an unreadable newest step was moved aside.
  nnx.replace_by_pure_dict(params, raw['params']['student'])
  nnx.replace_by_pure_dict(batch_stats, raw['batch_stats'])
  return nnx.merge(graph, params, batch_stats, rest), step


def load_model(checkpoint: str, name: str | None = None, num_classes: int = 1000, *,
               inference_form: str = 'branches', kernels: Kernels = Kernels(), **model_kw: Any
               ) -> tuple[nnx.Module, dict[str, Any]]:
  """Any checkpoint form as a model computing with `kernels`, and a record of what was loaded (for
  analysis tools).

  A run directory gives its trained student at its latest checkpoint (`name`, if given, must be the
  run's model; `num_classes` and `model_kw` come from the run's config); a converted directory or an
  official .pth/.npz/.safetensors file is loaded into `name` built with `num_classes` and `model_kw`.
  """
  p = epath.Path(checkpoint)
  if not p.exists():
    raise SetupError(f'Checkpoint {checkpoint} does not exist: name an lkd_jax run directory, a '
                     'converted directory (python -m lkd_jax.convert) or a .pth/.npz/.safetensors file.')
  if is_run_dir(checkpoint):
    run_model = (rundir.read_config(checkpoint) or {}).get('model', {}).get('name')
    if name and name != run_model:
      raise SetupError(f'Run {checkpoint} trained model {run_model!r}, not {name!r}; drop the model '
                       'name or name that one.')
    model, step = load_run_model(checkpoint, kernels)
    final = rundir.read_final(checkpoint) or {}
    record = {'kind': 'run', 'step': step, 'model': run_model, 'inference_form': inference_form,
              'config_digest': final.get('config_digest'), 'accuracy': final.get('accuracy')}
    return merge_large_kernels(model, inference_form), {'path': os.path.abspath(checkpoint), **record}
  if not name:
    raise SetupError(f'{checkpoint} is not an lkd_jax run directory: name its model '
                     '(python -m lkd_jax.models --list).')
  _check_suffix(p, 'Checkpoint')
  from lkd_jax import convert
  model = convert.load_teacher(checkpoint, name, num_classes, inference_form=inference_form,
                               kernels=kernels, **model_kw)
  record = {'kind': 'converted' if p.is_dir() else 'file', 'sha256': _sha256(checkpoint),
            'model': name, 'inference_form': inference_form, 'model_kwargs': model_kw}
  return model, {'path': os.path.abspath(checkpoint), **record}


def _sha256(path: str) -> str:
  """Content hash of a checkpoint file, or of a converted directory's variables file."""
  p = epath.Path(path)
  if p.is_dir():
    p = p / 'variables.npz'
  digest = hashlib.sha256()
  with p.open('rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      digest.update(chunk)
  return digest.hexdigest()[:16]
