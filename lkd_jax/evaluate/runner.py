"""Runs a model over evaluation sets with the training's eval machinery, and the teacher check.

Every set is read as training's eval split is: padded, masked batches (tfds_pipeline.eval_dataset,
synthetic.eval_batches), assembled into global arrays over the mesh's 'data' axis
(sharding.prefetch_to_mesh) and reduced by one jitted step built on step.eval_logits /
step.teacher_forward, whose masked sums (metrics.batch_sums) count every example exactly once on
any number of devices and processes.
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from lkd_jax import checkpoints, kernels, models, rundir, sharding
from lkd_jax import step as step_lib
from lkd_jax.data import DatasetNotFoundError
from lkd_jax.errors import SetupError
from lkd_jax.kernels import xla_options
from lkd_jax.evaluate import corruptions, metrics, sets
from lkd_jax.models.slak import merge_large_kernels

PROGRESS_EVERY_S = 10.0


class Weights(NamedTuple):
  """One set of a model's variables and which they are: 'raw', 'ema' or 'checkpoint'."""
  label: str
  params: Any
  batch_stats: Any


class Loaded(NamedTuple):
  """A model to evaluate: its structure, its weights (one or more) and where they came from."""
  name: str
  graph: Any
  rest: Any
  weights: tuple[Weights, ...]
  num_classes: int
  source: dict[str, Any]
  run_config: dict[str, Any] | None = None


def options(**overrides: Any) -> ml_collections.ConfigDict:
  """Evaluation options: data location, eval transform, batch size, corruption subset, synthetic task."""
  o = ml_collections.ConfigDict(dict(
      data_dir='',              # TFDS data_dir ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)
      mock=0,                   # N > 0: N tfds.testing.mock_data examples per set (tests)
      num_eval=0,               # N > 0: only the first N examples of each set
      image_size=224,           # eval size S
      crop_pct=0.875,           # shorter side to S / crop_pct, centre crop S (imagenet_c: 1.0)
      interpolation='bicubic',
      batch_size=256,           # global eval batch, a multiple of the device count
      threads=0, prefetch=2,
      corruptions=(),           # subset of the corrupted suites' corruptions; () = all
      severities=(1, 2, 3, 4, 5),
      extra_corruptions=False,  # imagenet_c: also speckle_noise, gaussian_blur, spatter, saturate
      v2_variant='matched-frequency',
      synthetic_seed=0,         # the embedded task's content seed, examples and size
      synthetic_num_eval=2048,
      synthetic_image_size=64,
  ))
  o.update(overrides)
  return o


def options_from_config(config: ml_collections.ConfigDict, **overrides: Any
                        ) -> ml_collections.ConfigDict:
  """Options matching a training config's eval split and transform (its data.* and eval_batch_size)."""
  d = config.data
  o = options(data_dir=d.get('data_dir', ''), mock=d.get('mock', 0), image_size=d.image_size,
              crop_pct=d.get('crop_pct', 0.875), interpolation=d.get('interpolation', 'bicubic'),
              batch_size=config.eval_batch_size, threads=d.get('threads', 0),
              synthetic_seed=d.get('seed', 0), synthetic_num_eval=d.get('num_eval', 0) or 2048,
              synthetic_image_size=d.image_size)
  o.update(overrides)
  return o


# ------------------------------------------------------------------------------------- loading

def _split(model: nnx.Module, label: str) -> tuple[Any, Any, Weights]:
  graph, params, batch_stats, rest = step_lib.split_student(model)
  return graph, rest, Weights(label, params, batch_stats)


def load(checkpoint: str, model_name: str = '', num_classes: int = 1000, *,
         model_kwargs: dict[str, Any] | None = None, inference_form: str = 'branches',
         ema: bool = True) -> Loaded:
  """Any checkpoint form: an lkd_jax run directory (its raw weights and, when saved, its EMA
  weights), a converted directory or an official .pth/.npz/.safetensors file (`model_name` needed)."""
  from lkd_jax import teacher as teacher_lib
  p = epath.Path(checkpoint)
  if not p.exists():
    raise SetupError(f'Checkpoint {checkpoint} does not exist: name an lkd_jax run directory, a '
                     'converted directory (python -m lkd_jax.convert) or a .pth/.npz/.safetensors file.')
  if teacher_lib.is_run_dir(checkpoint):
    return _load_run(checkpoint, model_name, inference_form, ema)
  if not model_name:
    raise SetupError(f'{checkpoint} is not an lkd_jax run directory: name its model with --model '
                     '(python -m lkd_jax.models --list).')
  from lkd_jax import convert
  model = convert.load_teacher(checkpoint, model_name, num_classes, inference_form=inference_form,
                               kernels=kernels.resolve({}, jax.default_backend()),
                               **(model_kwargs or {}))
  graph, rest, w = _split(model, 'checkpoint')
  source = {'kind': 'converted' if p.is_dir() else 'file', 'path': os.path.abspath(checkpoint),
            'inference_form': inference_form, 'model_kwargs': model_kwargs or {}}
  return Loaded(model_name, graph, rest, (w,), num_classes, source)


def _load_run(run_dir: str, model_name: str, inference_form: str, ema: bool) -> Loaded:
  cfg = rundir.read_config(run_dir) or {}
  name, kwargs = cfg['model']['name'], cfg['model'].get('kwargs', {})
  if model_name and model_name != name:
    raise SetupError(f'Run {run_dir} trained model {name!r}, not {model_name!r}: drop --model or '
                     f'set it to {name}.')
  model = models.create(name, num_classes=cfg['num_classes'],
                        kernels=kernels.resolve(cfg, jax.default_backend()), **kwargs)
  graph, params, batch_stats, rest = step_lib.split_student(model)
  with checkpoints.manager(os.path.join(run_dir, 'checkpoints')) as mngr:
    raw = checkpoints.restore_raw(mngr)
    step = mngr.latest_step()
  found = [('raw', raw['params']['student'], raw['batch_stats'])]
  if ema and raw.get('ema'):
    found.append(('ema', raw['ema']['params'], raw['ema']['batch_stats']))
  out = []
  for label, p, b in found:
    nnx.replace_by_pure_dict(params, p)
    nnx.replace_by_pure_dict(batch_stats, b)
    merged = merge_large_kernels(nnx.merge(graph, params, batch_stats, rest, copy=True),
                                 inference_form)
    g, r, w = _split(merged, label)
    out.append(w)
  final = rundir.read_final(run_dir) or {}
  source = {'kind': 'run', 'path': os.path.abspath(run_dir), 'step': step,
            'config_digest': final.get('config_digest'), 'inference_form': inference_form,
            'finished': final.get('step') == step}
  return Loaded(name, g, r, tuple(out), cfg['num_classes'], source, cfg)


# ---------------------------------------------------------------------------------------- data

def _data_config(s: sets.EvalSet, o: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  crop = s.crop_pct if s.crop_pct is not None else o.crop_pct
  return ml_collections.ConfigDict({
      'eval_batch_size': o.batch_size,
      'data': dict(name=s.builder, data_dir=o.data_dir, mock=o.mock, num_eval=o.num_eval,
                   image_size=o.image_size, crop_pct=crop, interpolation=o.interpolation,
                   threads=o.threads, prefetch=o.prefetch, cache_eval=False, eval_split=s.split,
                   train_split=s.split)})


def _real_fields(ex: dict) -> dict:
  import tensorflow as tf
  hot = tf.reduce_sum(tf.one_hot(ex['real_label'], 1000, dtype=tf.int32), 0) > 0
  return {'image': ex['image'], 'label': tf.cast(ex['original_label'], tf.int32), 'real': hot}


def tfds_batches(s: sets.EvalSet, o: ml_collections.ConfigDict
                 ) -> tuple[Callable[[], Iterator[dict]], int, str]:
  """(one padded pass over this process's share, examples over all processes, data_dir) of a TFDS
  set; DatasetNotFoundError when it is not prepared."""
  from lkd_jax.data import hide_accelerators_from_tf, tfds_pipeline as tp
  hide_accelerators_from_tf()
  cfg = _data_config(s, o)
  source = tp.open_source(cfg.data)
  proc = tp.Process(jax.process_index(), jax.process_count())
  if not tp.has_split(source, s.split, tuple(source.builder.info.splits.keys())):
    raise DatasetNotFoundError(f'{s.builder} has no split {s.split!r} in {source.builder.data_dir}.')
  n = tp.split_size(source, s.split, o.num_eval)
  fields = _real_fields if s.real else tp.image_label
  ds = tp.eval_dataset(source, cfg, proc, s.split, fields=fields)
  return ds.as_numpy_iterator, n, os.fspath(source.builder.data_dir_root)


@functools.lru_cache(maxsize=2)
def _synthetic_split(seed: int, num: int, size: int) -> tuple[np.ndarray, np.ndarray]:
  from lkd_jax.data import synthetic
  return synthetic.make_split(seed, 'validation', num, size)


def synthetic_batches(s: sets.EvalSet, o: ml_collections.ConfigDict
                      ) -> tuple[Callable[[], Iterator[dict]], int, str]:
  """The embedded task's validation split (corrupted as `s` says), padded and masked."""
  from lkd_jax.data import synthetic
  n = o.num_eval or o.synthetic_num_eval
  images, labels = _synthetic_split(o.synthetic_seed, n, o.synthetic_image_size)
  if s.corruption:
    images = corruptions.corrupt(images, s.corruption, s.severity, o.synthetic_seed)
  fn = lambda: synthetic.eval_batches(images, labels, batch_size=o.batch_size,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count())
  return fn, n, ''


# ------------------------------------------------------------------------------------------ run

def make_eval_fn(graph: Any, rest: Any, *, classes: tuple[int, ...] | None = None,
                 teacher_graph: Any = None, teacher_dtype: str = 'float32') -> Callable:
  """jit((params, batch_stats, teacher_state, batch) -> metrics.batch_sums of the batch)."""
  def fn(params, batch_stats, teacher_state, batch):
    logits = step_lib.eval_logits(params, batch_stats, batch['image'], graph=graph, rest=rest)
    t = None
    if teacher_graph is not None:
      x = step_lib.normalize(batch['image'])
      t = step_lib.teacher_forward(teacher_graph, teacher_state, x, jnp.dtype(teacher_dtype))[0]
    sub = None if classes is None else jnp.asarray(classes, jnp.int32)
    return metrics.batch_sums(logits, batch, classes=sub, teacher_logits=t)
  return xla_options.jit(fn)


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, file=sys.stderr, flush=True)


def run_batches(fn: Callable, params: Any, batch_stats: Any, teacher_state: Any,
                batches: Iterable[dict], mesh: sharding.Mesh, total: int, what: str
                ) -> dict[str, float]:
  """metrics.finish of one pass; logs images/s and ETA every PROGRESS_EVERY_S seconds."""
  totals, seen, t0, last = None, 0, time.time(), time.time()
  for batch in sharding.prefetch_to_mesh(iter(batches), mesh):
    out = fn(params, batch_stats, teacher_state, batch)
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    seen = min(total, seen + batch['mask'].shape[0])
    if time.time() - last > PROGRESS_EVERY_S:
      last = time.time()
      rate = seen / (last - t0)
      _log(f'  {what}: {seen}/{total} images, {rate:.0f} img/s, ETA {(total - seen) / rate:.0f} s')
  result = metrics.finish(jax.device_get(totals))
  dt = time.time() - t0
  _log(f'  {what}: {result["count"]} images in {dt:.1f} s ({result["count"] / max(dt, 1e-9):.0f} '
       'img/s)')
  return result


def evaluate(loaded: Loaded, eval_sets: list[sets.EvalSet], o: ml_collections.ConfigDict,
             mesh: sharding.Mesh | None = None, teacher: tuple[Any, Any] | None = None,
             teacher_dtype: str = 'float32') -> dict[str, Any]:
  """{'weights': {label: {'sets': {key: metrics | {'missing': why}}, 'summary': ...}}, 'data_dirs'}.

  `teacher`: (graphdef, state) of a frozen teacher (teacher.load's form): adds top-1 agreement and
  KL(teacher || student) to every set.
  """
  mesh = mesh or sharding.make_mesh()
  try:
    sharding.check_batch_size(o.batch_size, mesh, 'batch_size')
  except ValueError as e:
    raise SetupError(str(e)) from None
  put = lambda t: sharding.put_replicated(t, mesh)
  weights = [Weights(w.label, put(w.params), put(w.batch_stats)) for w in loaded.weights]
  t_graph, t_state = (None, None) if teacher is None else (teacher[0], put(teacher[1]))
  fns: dict[Any, Callable] = {}
  results = {w.label: {} for w in weights}
  data_dirs = set()
  for s in eval_sets:
    try:
      if s.builder:
        _check_classes(loaded, s)
      make, n, data_dir = (tfds_batches if s.builder else synthetic_batches)(s, o)
    except DatasetNotFoundError as e:
      _log(f'{s.key}: MISSING ({s.builder}): {str(e).splitlines()[0]}')
      for w in weights:
        results[w.label][s.key] = {'missing': str(e), 'builder': s.builder}
      continue
    if data_dir:
      data_dirs.add(data_dir)
    if s.classes not in fns:
      fns[s.classes] = make_eval_fn(loaded.graph, loaded.rest, classes=s.classes,
                                    teacher_graph=t_graph, teacher_dtype=teacher_dtype)
    for w in weights:
      _log(f'{s.key} [{w.label}]: {n} images')
      results[w.label][s.key] = run_batches(fns[s.classes], w.params, w.batch_stats, t_state,
                                            make(), mesh, n, f'{s.key} [{w.label}]')
  return {'weights': {k: {'sets': v, 'summary': summarize(v)} for k, v in results.items()},
          'data_dirs': sorted(data_dirs)}


def _check_classes(loaded: Loaded, s: sets.EvalSet) -> None:
  if loaded.num_classes != 1000:
    raise SetupError(f'{s.key} is labelled with the 1000 ImageNet classes but {loaded.name} has '
                     f'{loaded.num_classes}; evaluate an ImageNet-1k model.')


def summarize(set_results: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """Per suite: the clean sets' metrics as they are, the corrupted suites' corruption_summary."""
  out: dict[str, Any] = {}
  errors: dict[str, dict[str, dict[int, float]]] = {}
  for key, r in set_results.items():
    group = key.split('/')[0]
    if group not in sets.CORRUPTED:
      out[group] = r
      continue
    if 'missing' in r:
      out.setdefault(group, {}).setdefault('missing', []).append(key)
      continue
    _, name, sev = key.split('/')
    errors.setdefault(group, {}).setdefault(name, {})[int(sev)] = 1.0 - r['top1']
  for group, errs in errors.items():
    out[group] = {**out.get(group, {}),
                  **metrics.corruption_summary(errs, alexnet=group == 'imagenet_c')}
  return out


def as_teacher(loaded: Loaded) -> tuple[Any, Any]:
  """(graphdef, state) of a loaded model's first weights: the frozen-teacher form."""
  return nnx.split(nnx.merge(loaded.graph, loaded.weights[0].params,
                             loaded.weights[0].batch_stats, loaded.rest, copy=True))


def run_suite(model: tuple[Any, Any, Any, Any], suite: Iterable[str],
              config: ml_collections.ConfigDict, mesh: sharding.Mesh, *,
              ema: tuple[Any, Any] | None = None, teacher: tuple[Any, Any] | None = None
              ) -> dict[str, Any]:
  """The end-of-training evaluation: `model` = (graphdef, params, batch_stats, rest) of the student
  (step.split_student), `ema` = its (params, batch_stats) EMA when kept, on the suite's sets under
  the run's eval transform (options_from_config(config) + config.get('eval_options', {})).

  Returns {'raw': summary, 'ema': summary (when given), 'teacher_agreement': bool}, where a summary
  maps each suite name to its metrics (runner.summarize); a missing set appears as {'missing': why}.
  """
  graph, params, batch_stats, rest = model
  weights = (Weights('raw', params, batch_stats),)
  if ema is not None:
    weights += (Weights('ema', *ema),)
  loaded = Loaded(config.model.name, graph, rest, weights, config.num_classes, {'kind': 'training'})
  o = options_from_config(config, **config.get('eval_options', {}))
  eval_sets = sets.expand(list(suite), corruption_names=tuple(o.corruptions),
                          severities=tuple(o.severities), extra_corruptions=o.extra_corruptions,
                          v2_variant=o.v2_variant)
  dtype = config.teacher.get('dtype', 'float32') if teacher is not None else 'float32'
  out = evaluate(loaded, eval_sets, o, mesh, teacher=teacher, teacher_dtype=dtype)
  result = {label: r['summary'] for label, r in out['weights'].items()}
  return {**result, 'teacher_agreement': teacher is not None}


class TeacherAtChanceError(SetupError):
  """The frozen teacher is no better than chance on the eval split: it was loaded wrongly."""


def chance_threshold(num_classes: int, count: int) -> float:
  """The accuracy a teacher must beat: chance + 4 binomial standard errors (a wrong load sits at
  chance; a weak but real teacher, e.g. a short demo's, is well above it)."""
  chance = 1.0 / num_classes
  return chance + 4.0 * math.sqrt(chance * (1.0 - chance) / max(count, 1))


def check_teacher(graph: Any, state: Any, batches: Iterable[dict], mesh: sharding.Mesh,
                  num_classes: int, *, num_batches: int = 10, dtype: str = 'float32',
                  min_accuracy: float = -1.0, what: str = 'the teacher') -> dict[str, Any]:
  """Evaluates a frozen teacher (graphdef, state already on the mesh or host) on the first
  `num_batches` padded eval batches (the student's eval preprocessing); returns its accuracy record.

  Raises TeacherAtChanceError when the accuracy is not above `min_accuracy` (-1: chance_threshold;
  0: never raise), naming the usual causes.
  """
  if num_batches <= 0:
    return {'verdict': 'skipped'}
  fn = xla_options.jit(functools.partial(_teacher_sums, graph=graph, dtype=dtype))
  state = sharding.put_params(state, mesh)  # a sharded (FSDP) teacher stays sharded
  totals = None
  for batch in sharding.prefetch_to_mesh(itertools.islice(iter(batches), num_batches), mesh):
    out = fn(state, batch)
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  r = metrics.finish(jax.device_get(totals))
  threshold = chance_threshold(num_classes, r['count']) if min_accuracy < 0 else min_accuracy
  record = {'accuracy': r['top1'], 'top5': r.get('top5'), 'count': r['count'],
            'chance': 1.0 / num_classes, 'threshold': threshold,
            'verdict': 'ok' if r['top1'] > threshold or threshold <= 0 else 'at_chance'}
  if record['verdict'] == 'at_chance':
    raise TeacherAtChanceError(
        f'{what} scores {100 * r["top1"]:.2f}% top-1 on {r["count"]} eval images, not above '
        f'{100 * threshold:.2f}% (chance is {100 / num_classes:.2f}% for {num_classes} classes): it '
        'was loaded wrongly. Likely causes: the wrong checkpoint for teacher.name; kernel sizes or '
        'other model arguments that differ from the checkpoint\'s (teacher.kwargs, e.g. SLaK\'s '
        'kernel_size); the wrong teacher.inference_form; a class count or class order that differs '
        'from the dataset\'s (num_classes); or eval preprocessing unlike the teacher\'s. To distil '
        'anyway set teacher.check_min_accuracy=0 (or teacher.check_batches=0 to skip the check).')
  return record


def _teacher_sums(state: Any, batch: dict[str, jax.Array], *, graph: Any, dtype: str
                  ) -> dict[str, jax.Array]:
  x = step_lib.normalize(batch['image'])
  logits, _ = step_lib.teacher_forward(graph, state, x, jnp.dtype(dtype))
  return metrics.batch_sums(logits, batch)
