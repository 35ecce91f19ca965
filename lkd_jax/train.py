"""run(config, workdir): build the state, run the fused step loop with eval, logging and checkpoints."""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from clu import metric_writers, periodic_actions
from etils import epath
from flax import nnx

from lkd_jax import checkpoints, optim, sharding, xla_options
from lkd_jax import data as data_lib
from lkd_jax import models
from lkd_jax import step as step_lib
from lkd_jax.distill import methods, projectors
from lkd_jax.models import conv, layers
from lkd_jax.models.slak import merge_large_kernels


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the job (chained stages) or the single run described by `config` in `workdir`."""
  if config.get('stages'):
    from lkd_jax import job
    return job.run_job(config, workdir)
  return train_and_evaluate(config, workdir)


def config_text(config: ml_collections.ConfigDict) -> str:
  """The config as the JSON text that config.json holds."""
  return config.to_json_best_effort(indent=2, sort_keys=True)


def config_digest(config: ml_collections.ConfigDict) -> str:
  """A short hash of the config text: final_metrics.json records which config produced it."""
  return hashlib.sha256(config_text(config).encode()).hexdigest()[:16]


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the locked config as config.json; a different config on resume goes beside it, never over it.

  Only process 0 writes (the workdir is shared by all hosts of a pod, e.g. on gs://).
  """
  if jax.process_index() != 0:
    return
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  text = config_text(config)
  path = workdir / 'config.json'
  if path.exists():
    if path.read_text() == text:
      return
    path = workdir / f'config.{time.strftime("%Y%m%d-%H%M%S")}.json'
  path.write_text(text)


def _validate(config: ml_collections.ConfigDict) -> methods.Method:
  method = methods.get(config.method)
  if method.needs_teacher and not config.teacher.name:
    raise ValueError(f'Method {config.method!r} needs a teacher: set teacher.name and '
                     'teacher.checkpoint (or use method=ce).')
  for name in (config.model.name, config.teacher.name if method.needs_teacher else None):
    if name is not None and name not in models.names():
      raise ValueError(f'Unknown model {name!r}. Known models: {", ".join(models.names())}.')
  return method


def load_teacher(config: ml_collections.ConfigDict, num_classes: int) -> tuple[Any, Any]:
  """(graphdef, state) of the frozen teacher from teacher.checkpoint (a run dir or a converted file)."""
  path = config.teacher.checkpoint
  if not path:
    raise ValueError('teacher.checkpoint is empty: name a run directory of lkd_jax, or a '
                     '.pth/.npz/.safetensors file or converted directory (python -m lkd_jax.convert).')
  form = config.teacher.inference_form
  if (epath.Path(path) / 'config.json').exists() and checkpoints.latest_step(
      os.path.join(path, 'checkpoints')) is not None:
    teacher = merge_large_kernels(load_run_model(path), form)
  else:
    from lkd_jax import convert
    teacher = convert.load_teacher(path, config.teacher.name, num_classes, inference_form=form,
                                   **config.teacher.kwargs)
  return nnx.split(teacher)


def load_run_model(run_dir: str) -> nnx.Module:
  """The trained student of an lkd_jax run directory (its latest checkpoint), as a module."""
  cfg = ml_collections.ConfigDict(json.loads((epath.Path(run_dir) / 'config.json').read_text()))
  model = models.create(cfg.model.name, num_classes=cfg.num_classes, **cfg.model.kwargs)
  graph, params, batch_stats, rest = step_lib.split_student(model)
  with checkpoints.manager(os.path.join(run_dir, 'checkpoints')) as mngr:
    raw = checkpoints.restore_raw(mngr)
  nnx.replace_by_pure_dict(params, raw['params']['student'])
  nnx.replace_by_pure_dict(batch_stats, raw['batch_stats'])
  return nnx.merge(graph, params, batch_stats, rest)


def _total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  if config.total_steps > 0:
    return config.total_steps
  return int(math.ceil(config.epochs * num_train / config.batch_size))


def _init_state(config, student, projector, tx) -> tuple[step_lib.TrainState, step_lib.Graphs]:
  graph, params, batch_stats, rest = step_lib.split_student(student)
  p_graph, p_params = (None, {}) if projector is None else nnx.split(projector, nnx.Param)
  all_params = {'student': params, 'projector': p_params}
  ema = None
  if config.ema_decay > 0:
    ema = jax.tree.map(jnp.copy, {'params': params, 'batch_stats': batch_stats})
  state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=all_params,
                              batch_stats=batch_stats, opt_state=tx.init(all_params), ema=ema)
  return state, step_lib.Graphs(graph, rest, p_graph, None)


def _check_finite(metrics: dict[str, Any], step: int, mngr) -> None:
  loss, gnorm = float(metrics['loss']), float(metrics['grad_norm'])
  if not (math.isfinite(loss) and math.isfinite(gnorm)):
    mngr.wait_until_finished()
    raise FloatingPointError(
        f'Non-finite loss ({loss}) or grad norm ({gnorm}) at step {step}. Stopping; the last good '
        f'checkpoint (step {mngr.latest_step()}) is kept in {mngr.directory}. Lower optim.lr, '
        'raise optim.warmup_steps or set optim.grad_clip.')


def evaluate(eval_fn, params, batch_stats, batches, mesh) -> dict[str, float]:
  """Exact masked accuracy/loss over one pass of eval batches."""
  totals = None
  for batch in batches:
    out = eval_fn(params, batch_stats, sharding.global_batch(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  n = max(float(totals['count']), 1.0)
  return {'accuracy': float(totals['correct']) / n, 'top5': float(totals['correct5']) / n,
          'loss': float(totals['loss_sum']) / n, 'count': int(totals['count'])}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains one student (optionally distilled from a frozen teacher); returns the final eval metrics."""
  method = _validate(config)
  layers.set_depthwise_impl(config.depthwise_impl)
  conv.set_conv_impl(config.conv_impl)
  layers.set_layer_norm_impl(config.layer_norm_impl)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  data = data_lib.build(config)  # A missing dataset fails here, before anything is written.
  write_config(config, workdir)
  if data.num_classes != config.num_classes:
    raise ValueError(f'config.num_classes={config.num_classes} but the dataset has '
                     f'{data.num_classes} classes.')
  total_steps = _total_steps(config, data.num_train)
  steps_per_epoch = data.num_train / config.batch_size
  eval_every = config.eval_every
  if config.get('eval_every_epochs', 0) > 0:
    eval_every = max(1, int(round(config.eval_every_epochs * steps_per_epoch)))

  student = models.create(config.model.name, num_classes=config.num_classes, seed=config.seed,
                          **config.model.kwargs)
  teacher_graph, teacher_state = None, None
  if method.needs_teacher:
    teacher_graph, teacher_state = load_teacher(config, config.num_classes)
    teacher_state = sharding.put_replicated(teacher_state, mesh)
  projector = None
  if method.needs_projector:  # FD projectors sized from eval_shape'd feature maps (no FLOPs).
    projector = methods.build_projector(
        config, projectors.feature_shapes(student, config.data.image_size),
        projectors.feature_shapes((teacher_graph, teacher_state), config.data.image_size),
        config.seed)
  tx, lr_fn = optim.make(config, total_steps, steps_per_epoch)
  state, graphs = _init_state(config, student, projector, tx)
  graphs = graphs._replace(teacher=teacher_graph)
  state = sharding.put_replicated(state, mesh)

  ckpt_dir = os.path.join(workdir, 'checkpoints')
  mngr = checkpoints.manager(ckpt_dir, max_to_keep=config.keep_checkpoints)
  start = 0
  if mngr.latest_step() is not None:
    state = checkpoints.restore(mngr, state)
    start = int(state.step)
    logging.info('Resumed from %s at step %d.', ckpt_dir, start)

  repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  train_fn = xla_options.jit(
      functools.partial(step_lib.train_step, graphs=graphs, tx=tx, lr_fn=lr_fn, cfg=config),
      in_shardings=(repl, repl, batch_sh), out_shardings=(repl, repl), donate_argnums=(0,))
  eval_fn = xla_options.jit(functools.partial(step_lib.eval_step, graph=graphs.student,
                                              rest=graphs.student_rest))

  def do_eval(s: step_lib.TrainState) -> dict[str, float]:
    out = evaluate(eval_fn, s.params['student'], s.batch_stats, data.eval(), mesh)
    if s.ema is not None:
      ema = evaluate(eval_fn, s.ema['params'], s.ema['batch_stats'], data.eval(), mesh)
      out.update({f'ema_{k}': v for k, v in ema.items() if k != 'count'})
    return out

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start == 0:
    writer.write_hparams({k: v for k, v in _flat(config).items()})
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                             every_steps=config.log_every)
  prev, t_log, last_log_step = None, time.time(), start
  train_iter = sharding.prefetch_to_mesh(data.train(start), mesh)
  try:
    for step in range(start + 1, total_steps + 1):
      batch = next(train_iter)
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, metrics = train_fn(state, teacher_state, batch)
      if prev is not None:
        _check_finite(prev, step - 1, mngr)  # one step behind: keeps dispatch asynchronous.
      prev = metrics
      progress(step)
      is_last = step == total_steps
      if step % config.log_every == 0 or is_last:
        scalars = {f'train/{k}': float(v) for k, v in jax.device_get(metrics).items()}
        dt = time.time() - t_log
        scalars['train/img_per_sec'] = (step - last_log_step) * config.batch_size / max(dt, 1e-9)
        writer.write_scalars(step, scalars)
        t_log, last_log_step = time.time(), step
      if (eval_every and step % eval_every == 0) and not is_last:
        with progress.timed('eval'):
          writer.write_scalars(step, {f'eval/{k}': v for k, v in do_eval(state).items()})
      preempted = mngr.reached_preemption(step)
      if step % config.checkpoint_every == 0 or is_last or preempted:
        _check_finite(metrics, step, mngr)
        checkpoints.save(mngr, step, state, force=True)
      if preempted:
        mngr.wait_until_finished()
        raise SystemExit(f'Preempted: saved step {step} to {ckpt_dir}; rerun the same command '
                         'to resume.')
  finally:
    mngr.wait_until_finished()
  result = do_eval(state)
  writer.write_scalars(total_steps, {f'eval/{k}': v for k, v in result.items()})
  writer.flush()
  mngr.close()
  result['step'] = total_steps
  result['config_digest'] = config_digest(config)
  if jax.process_index() == 0:
    (epath.Path(workdir) / 'final_metrics.json').write_text(json.dumps(result, indent=2))
  return result


def _flat(config: ml_collections.ConfigDict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.update(_flat(v, f'{prefix}{k}.'))
    elif isinstance(v, (int, float, str, bool)):
      out[f'{prefix}{k}'] = v
  return out
