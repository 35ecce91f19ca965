"""run(config, workdir): build the state, run the fused step loop with eval, logging and checkpoints."""
from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from flax import nnx

from lkd_jax import checkpoints, cost, kernels, lock, optim, rundir, sharding
from lkd_jax import evaluate as eval_lib
from lkd_jax import teacher as teacher_lib
from lkd_jax import data as data_lib
from lkd_jax import models
from lkd_jax import step as step_lib
from lkd_jax.distill import methods, projectors, scalekd
from lkd_jax.errors import SetupError
from lkd_jax.kernels import Kernels, xla_options


def validate(config: ml_collections.ConfigDict, workdir: str, pending_stages: tuple[str, ...] = ()
             ) -> tuple[ml_collections.ConfigDict, methods.Method]:
  """The run's config with the dataset's class count and eval split filled in, and its method.

  Checks everything before anything is built or written; raises SetupError naming the fix.
  `pending_stages`: earlier stages of a job, whose outputs (a `stage:` teacher) need not exist yet.
  """
  config = data_lib.resolve(config)  # A missing dataset fails here.
  try:
    method = methods.get(config.method)
  except ValueError as e:
    raise SetupError(str(e)) from None
  if method.needs_teacher and not config.teacher.name:
    raise SetupError(f'Method {config.method!r} needs a teacher: set teacher.name and '
                     'teacher.checkpoint (or use method=ce).')
  for name in (config.model.name, config.teacher.name if method.needs_teacher else None):
    if name is not None and name not in models.names():
      raise SetupError(f'Unknown model {name!r}. Known models: {", ".join(models.names())}.')
  if method.needs_projector and not method.uses_teacher_tail:
    try:
      projectors.parse_stages(config.fd_stages)
    except ValueError as e:
      raise SetupError(str(e)) from None
  target = config.get('target_accuracy', 0.0)
  if not 0.0 <= target <= 1.0 or (target and not (config.eval_every or
                                                  config.get('eval_every_epochs', 0))):
    raise SetupError(f'target_accuracy={target} must be a top-1 fraction in [0, 1] (0: off) and '
                     'needs periodic evaluation (eval_every > 0 or eval_every_epochs > 0).')
  if config.total_steps < 0 or (config.total_steps == 0 and config.epochs <= 0):
    raise SetupError(f'The run has no steps (total_steps={config.total_steps}, '
                     f'epochs={config.epochs}): set total_steps > 0 or epochs > 0.')
  config.compute_dtype = resolve_compute_dtype(config.compute_dtype, jax.default_backend())
  try:
    mesh = sharding.make_mesh(fsdp=config.mesh.fsdp)
    for key in ('batch_size', 'eval_batch_size'):
      sharding.check_batch_size(config[key], mesh, key)
  except ValueError as e:
    raise SetupError(str(e)) from None
  kernels.resolve(config, jax.default_backend())  # an unknown kernel name fails here.
  if method.needs_teacher:
    teacher_lib.check(config, workdir, pending_stages)
  return config, method


COMPUTE_DTYPES = ('float32', 'bfloat16')


def resolve_compute_dtype(name: str, platform: str) -> str:
  """The student's compute dtype: `name`, or for 'auto' bfloat16 on GPU/TPU and float32 on CPU
  (XLA:CPU has no fast bfloat16 convolutions)."""
  if name == 'auto':
    return 'float32' if platform == 'cpu' else 'bfloat16'
  if name not in COMPUTE_DTYPES:
    raise SetupError(f'compute_dtype={name!r}: use one of {", ".join(COMPUTE_DTYPES)} or auto.')
  return name


def _total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  if config.total_steps > 0:
    return config.total_steps
  return int(math.ceil(config.epochs * num_train / config.batch_size))


def init_state(config: ml_collections.ConfigDict, student: nnx.Module, projector: nnx.Module | None,
               tx: optax.GradientTransformation) -> tuple[step_lib.TrainState, step_lib.Graphs]:
  """The step-0 TrainState of `student` (and FD `projector`) and their Graphs (teacher: None)."""
  graph, params, batch_stats, rest = step_lib.split_student(student)
  p_graph, p_params = (None, {}) if projector is None else nnx.split(projector, nnx.Param)
  all_params = {'student': params, 'projector': p_params}
  ema = None
  if config.ema_decay > 0:
    ema = jax.tree.map(jnp.copy, {'params': params, 'batch_stats': batch_stats})
  state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=all_params,
                              batch_stats=batch_stats, opt_state=tx.init(all_params), ema=ema)
  return state, step_lib.Graphs(graph, rest, p_graph, None)


class NonFiniteError(FloatingPointError):
  """Training produced NaN/inf: the run stops, the last good checkpoint is kept."""


def _kept(mngr) -> str:
  checkpoints.wait(mngr)
  last = mngr.latest_step()
  if last is None:
    return f'no checkpoint was written yet ({mngr.directory} holds none)'
  return f'the last good checkpoint (step {last}) is kept in {mngr.directory}'


def _check_finite(metrics: dict[str, Any], step: int, mngr) -> None:
  loss, gnorm = float(metrics['loss']), float(metrics['grad_norm'])
  state_ok = bool(metrics['state_finite'])
  if not (math.isfinite(loss) and math.isfinite(gnorm) and state_ok):
    what = f'loss {loss}, grad norm {gnorm}, updated state {"finite" if state_ok else "NaN/inf"}'
    raise NonFiniteError(
        f'Non-finite training at step {step} ({what}). Stopping; {_kept(mngr)}. Lower optim.lr, '
        'raise optim.warmup_steps or set optim.grad_clip.')


def _check_final(result: dict[str, float], mngr) -> None:
  bad = {k: v for k, v in result.items() if isinstance(v, float) and not math.isfinite(v)}
  if bad:
    raise NonFiniteError(f'The final evaluation is not finite ({bad}); final_metrics.json was not '
                         f'written and {_kept(mngr)}.')


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       overwrite: bool = False,
                       writers: Sequence[metric_writers.MetricWriter] = ()) -> dict[str, Any]:
  """Trains one student (optionally distilled from a frozen teacher); returns the final eval metrics.

  A workdir that finished with this config is read back; one holding another config's record is
  refused (StageMismatch) or, with `overwrite`, moved aside first. Nothing is written before the
  config, the dataset and the workdir's lock have been checked. `writers`: clu metric writers that
  receive every scalar the run logs, besides its TensorBoard + logging writer (e.g.
  lkd_jax.analysis.live.LiveCurves in a notebook).
  """
  config, method = validate(config, workdir)
  try:
    status = rundir.inspect(config, workdir)
  except rundir.StageMismatch:
    if not overwrite:
      raise
    status = rundir.Status('replace')
  if status.kind == 'finished':
    logging.info('%s already finished with this config: reading its %s.', workdir, rundir.FINAL_FILE)
    return status.result
  kern = kernels.resolve(config, jax.default_backend())
  mesh = sharding.make_mesh(fsdp=config.mesh.fsdp)
  data = data_lib.build(config)
  teacher = _load_teacher(config, workdir, mesh, data, kern) if method.needs_teacher else None
  with lock.hold(workdir):
    if status.kind in ('replace', 'stale'):
      rundir.move_aside(workdir)
    rundir.write_config(config, workdir)
    return _train(config, workdir, method, mesh, data, teacher, kern, writers)


def _compile(train_fn, teacher_fn, state, teacher_state, batch, mesh
             ) -> tuple[Any, Any, dict[str, float] | None]:
  """The compiled step and teacher forward (ahead of time) and, with a teacher, the step's FLOP split."""
  train_fn = train_fn.lower(state, teacher_state, batch).compile()
  if teacher_fn is None:
    return train_fn, None, None
  teacher_fn = teacher_fn.lower(teacher_state, batch).compile()
  record = cost.teacher_share(cost.flops(train_fn), cost.flops(teacher_fn), mesh.devices.size)
  logging.info('%s', cost.describe(record))
  return train_fn, teacher_fn, record


def _time_teacher(record: dict[str, float], teacher_fn, teacher_state, batch,
                  step_seconds: float) -> dict[str, float]:
  """`record` with the compiled teacher forward timed alone against the measured step time."""
  record = dict(record, **cost.time_share(step_seconds,
                                          cost.time_call(teacher_fn, teacher_state, batch)))
  logging.info('%s', cost.describe(record))
  return record


def _load_teacher(config: ml_collections.ConfigDict, workdir: str, mesh: sharding.Mesh,
                  data: data_lib.Dataset, kern: Kernels) -> tuple[Any, Any, dict[str, Any]]:
  """(graphdef, state on the mesh, source) of the frozen teacher, checked on the eval split."""
  graph, state, source = teacher_lib.load(config, workdir, config.num_classes, kern)
  state = sharding.put_params(state, mesh)
  source['check'] = eval_lib.check_teacher(
      graph, state, data.eval(), mesh, config.num_classes,
      num_batches=config.teacher.check_batches, dtype=config.teacher.dtype,
      min_accuracy=config.teacher.check_min_accuracy, what=f'The teacher {config.teacher.name}')
  logging.info('Teacher check on the eval split: %s', source['check'])
  return graph, state, source


def jit_train_step(config: ml_collections.ConfigDict, graphs: step_lib.Graphs,
                   tx: optax.GradientTransformation, lr_fn: Any, mesh: sharding.Mesh,
                   state: step_lib.TrainState, teacher_state: Any) -> Any:
  """The run's jitted step (state, teacher_state, batch) -> (state, metrics): step.train_step for
  `config` on `mesh`, state and teacher sharded by sharding.param_shardings (FSDP), the state
  donated (benchmarks/kd_step.py times this very function)."""
  state_sh = sharding.param_shardings(state, mesh)
  teacher_sh = sharding.param_shardings(teacher_state, mesh)
  repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  return xla_options.jit(
      functools.partial(step_lib.train_step, graphs=graphs, tx=tx, lr_fn=lr_fn, cfg=config),
      in_shardings=(state_sh, teacher_sh, batch_sh), out_shardings=(state_sh, repl),
      donate_argnums=(0,))


def _train(config: ml_collections.ConfigDict, workdir: str, method: methods.Method,
           mesh: sharding.Mesh, data: data_lib.Dataset,
           teacher: tuple[Any, Any, dict[str, Any]] | None, kern: Kernels,
           writers: Sequence[metric_writers.MetricWriter] = ()) -> dict[str, Any]:
  total_steps = _total_steps(config, data.num_train)
  steps_per_epoch = data.num_train / config.batch_size
  eval_every = config.eval_every
  if config.get('eval_every_epochs', 0) > 0:
    eval_every = max(1, int(round(config.eval_every_epochs * steps_per_epoch)))

  student = models.create(config.model.name, num_classes=config.num_classes, seed=config.seed,
                          kernels=kern, **config.model.kwargs)
  teacher_graph, teacher_state, teacher_source = teacher or (None, None, None)
  projector = None
  if method.uses_teacher_tail:
    scalekd.check_teacher(config.teacher.name, nnx.merge(teacher_graph, teacher_state), config)
  if method.needs_projector:  # projectors sized from eval_shape'd feature maps (no FLOPs).
    projector = methods.build_projector(
        config, projectors.feature_shapes(student, config.data.image_size),
        projectors.feature_shapes((teacher_graph, teacher_state), config.data.image_size),
        config.seed)
  tx, lr_fn = optim.make(config, total_steps, steps_per_epoch)
  state, graphs = init_state(config, student, projector, tx)
  graphs = graphs._replace(teacher=teacher_graph)
  state = sharding.put_params(state, mesh)

  ckpt_dir = os.path.join(workdir, 'checkpoints')
  mngr = checkpoints.manager(ckpt_dir, max_to_keep=config.keep_checkpoints)
  start = 0
  if mngr.latest_step() is not None:
    state = checkpoints.restore(mngr, state)
    start = int(state.step)
    logging.info('Resumed from %s at step %d.', ckpt_dir, start)

  train_fn = jit_train_step(config, graphs, tx, lr_fn, mesh, state, teacher_state)
  teacher_fn = None if teacher_graph is None else xla_options.jit(
      functools.partial(step_lib.teacher_only, graph=teacher_graph, cfg=config),
      in_shardings=(sharding.param_shardings(teacher_state, mesh), sharding.batch_sharded(mesh)))
  eval_fn = xla_options.jit(functools.partial(step_lib.eval_step, graph=graphs.student,
                                              rest=graphs.student_rest))

  def do_eval(s: step_lib.TrainState) -> dict[str, float]:
    out = evaluate(eval_fn, s.params['student'], s.batch_stats, data.eval(), mesh)
    if s.ema is not None:
      ema = evaluate(eval_fn, s.ema['params'], s.ema['batch_stats'], data.eval(), mesh)
      out.update({f'ema_{k}': v for k, v in ema.items() if k != 'count'})
    return out

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if writers:
    writer = metric_writers.MultiWriter([writer, *writers])
  if start == 0:
    writer.write_hparams({k: v for k, v in rundir.flatten(config.to_dict()).items()
                          if isinstance(v, (int, float, str, bool))})
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                             every_steps=config.log_every)
  prev, t_log, last_log_step = None, time.time(), start
  teacher_cost, timed = None, teacher_fn is None
  target = config.get('target_accuracy', 0.0)
  out, reached = None, False
  if target and start and start % eval_every == 0:
    # A run resumed at an evaluation step that had reached the target ends there, as it did.
    out = do_eval(state)
    reached = out['accuracy'] >= target
  train_iter = sharding.prefetch_to_mesh(data.train(start), mesh)
  step = start
  try:
    for step in range(start + 1, (start if reached else total_steps) + 1):
      batch = next(train_iter)
      if step == start + 1:  # compiled ahead of the first call, to read its cost analysis
        train_fn, teacher_fn, teacher_cost = _compile(train_fn, teacher_fn, state, teacher_state,
                                                      batch, mesh)
        t_log = time.time()
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
        if not timed and (last_log_step > start or is_last):  # the first interval warms up
          teacher_cost = _time_teacher(teacher_cost, teacher_fn, teacher_state, batch,
                                       dt / (step - last_log_step))
          timed = True
        writer.write_scalars(step, scalars)
        t_log, last_log_step = time.time(), step
      if (eval_every and step % eval_every == 0) and not is_last:
        with progress.timed('eval'):
          out = do_eval(state)
          writer.write_scalars(step, {f'eval/{k}': v for k, v in out.items()})
        reached = bool(target) and out['accuracy'] >= target
        if reached:
          logging.info('Eval top-1 %.4f reached target_accuracy %.4f at step %d: training ends.',
                       out['accuracy'], target, step)
      preempted = mngr.reached_preemption(step)
      if step % config.checkpoint_every == 0 or is_last or preempted or reached:
        _check_finite(metrics, step, mngr)
        checkpoints.save(mngr, step, state, force=True)
      if preempted:
        checkpoints.wait(mngr)
        raise SystemExit(f'Preempted: saved step {step} to {ckpt_dir}; rerun the same command '
                         'to resume.')
      if reached:
        break
  except BaseException:
    # Let a pending save finish (a kill keeps the last step); its own failure would only repeat
    # the error already on its way out.
    with contextlib.suppress(Exception):
      mngr.wait_until_finished()
    raise
  checkpoints.wait(mngr)
  result = dict(out) if reached else do_eval(state)  # the evaluation that ended the run, once
  _check_final(result, mngr)
  if config.evals:
    result['evals'] = eval_lib.run_suite(
        (graphs.student, state.params['student'], state.batch_stats, graphs.student_rest),
        [s for s in config.evals.split('+') if s], config, mesh,
        ema=None if state.ema is None else (state.ema['params'], state.ema['batch_stats']),
        teacher=None if teacher_graph is None else (teacher_graph, teacher_state))
  writer.write_scalars(step, {f'eval/{k}': v for k, v in rundir.flatten(result).items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)})
  writer.flush()
  mngr.close()
  result['step'] = step
  result['config_digest'] = rundir.config_digest(config)
  if teacher_source is not None:
    result['teacher'] = teacher_source
  if teacher_cost is not None:
    result['teacher_cost'] = teacher_cost
  rundir.write_final(result, workdir)
  return result
