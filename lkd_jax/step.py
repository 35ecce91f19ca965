"""The fused distillation train step and the eval step, as pure functions compiled once by jax.jit.

batch (uint8) -> normalise -> mixup/cutmix once -> teacher (eval, stop_gradient) + student (train)
-> method loss -> grads w.r.t. student and projector params -> optax update. The teacher's variables
are a separate, non-donated argument; they are never returned.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from lkd_jax.data import device_augment, mix
from lkd_jax.distill import losses, methods, scalekd

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@flax.struct.dataclass
class TrainState:
  """Everything a run checkpoints: the student (and projector) params, BN statistics, optimizer."""
  step: jax.Array
  params: Any        # {'student': nnx.State of Params, 'projector': nnx.State or {}}
  batch_stats: Any   # student nnx.State of BatchStats
  opt_state: Any
  ema: Any = None    # {'params', 'batch_stats'} exponential moving average of the student, or None


class Graphs(NamedTuple):
  """Static structure of the models (NNX graphdefs) plus their non-array leftovers (rng streams)."""
  student: Any
  student_rest: Any
  projector: Any | None
  teacher: Any | None


def split_student(model: nnx.Module) -> tuple[Any, Any, Any, Any]:
  """(graphdef, params, batch_stats, rest) of a student module."""
  return nnx.split(model, nnx.Param, nnx.BatchStat, ...)


def normalize(images: jax.Array, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> jax.Array:
  """uint8 (or 0-255 float) NHWC -> float32 normalised pixels."""
  return (images.astype(jnp.float32) - jnp.asarray(mean)) / jnp.asarray(std)


def cast_floats(tree: Any, dtype: Any) -> Any:
  """`tree` with its floating-point leaves in `dtype` (a frozen teacher's state, cast once at load)."""
  return jax.tree.map(lambda v: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v,
                      tree)


def teacher_forward(graph: Any, teacher_state: Any, x: jax.Array, dtype: Any
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Frozen teacher (state already in `dtype`: cast_floats) in eval mode on `x` cast to `dtype`;
  logits cast to float32, no gradient."""
  logits, feats = nnx.merge(graph, teacher_state)(x.astype(dtype), train=False)
  return jax.lax.stop_gradient((logits.astype(jnp.float32), feats))


def teacher_only(teacher_state: Any, batch: dict[str, jax.Array], *, graph: Any,
                 cfg: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The step's teacher part alone (batch preparation and frozen forward), for its cost record."""
  x, _ = prepare_batch(batch, jax.random.key(cfg.seed), cfg)
  return teacher_forward(graph, teacher_state, x, jnp.dtype(cfg.teacher.dtype))


def student_loss(params: Any, batch_stats: Any, graphs: Graphs, teacher_out: Any, x: jax.Array,
                 targets: jax.Array, rng: jax.Array, cfg: ml_collections.ConfigDict,
                 step: jax.Array | None = None, teacher_state: Any = None
                 ) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
  """Method loss of the student in train mode; returns (loss, (metrics, new batch_stats)).

  A method that `uses_teacher_tail` also gets the teacher module, its weights under stop_gradient.
  The student computes in cfg.compute_dtype (its float32 params cast on the way in, so their
  gradients come back float32); BatchNorm statistics stay float32 and the method loss sees float32
  outputs.
  """
  method = methods.get(cfg.method)
  dtype = jnp.dtype(cfg.compute_dtype)
  model = nnx.merge(graphs.student, cast_floats(params['student'], dtype), batch_stats,
                    graphs.student_rest, copy=True)
  nnx.reseed(model, dropout=rng)
  student_out = cast_floats(model(x.astype(dtype), train=True), jnp.float32)
  projector = None if graphs.projector is None else nnx.merge(graphs.projector,
                                                             params['projector'])
  extra = {}
  if method.uses_teacher_tail:
    extra['teacher'] = nnx.merge(graphs.teacher, scalekd.frozen(teacher_state), copy=True)
  loss, metrics = method.loss(student_out, teacher_out, targets, projector, cfg, step=step, **extra)
  metrics = dict(metrics, loss=loss, train_accuracy=losses.accuracy(student_out[0], targets))
  return loss, (metrics, nnx.state(model, nnx.BatchStat))


def prepare_batch(batch: dict[str, jax.Array], rng: jax.Array, cfg: ml_collections.ConfigDict
                  ) -> tuple[jax.Array, jax.Array]:
  """Normalised, mixed pixels and soft targets: computed once, fed to teacher and student."""
  x = normalize(device_augment.images(batch, cfg.data))  # device-augment batches finished here
  return mix.mix_batch(rng, x, batch['label'], cfg.num_classes, cfg.mix)


def train_step(state: TrainState, teacher_state: Any, batch: dict[str, jax.Array], *,
               graphs: Graphs, tx: optax.GradientTransformation, lr_fn: Any,
               cfg: ml_collections.ConfigDict) -> tuple[TrainState, dict[str, jax.Array]]:
  """One fused step. Randomness derives from (cfg.seed, step), so a resumed run repeats it exactly."""
  rng = jax.random.fold_in(jax.random.key(cfg.seed), state.step)
  mix_rng, drop_rng = jax.random.split(rng)
  x, targets = prepare_batch(batch, mix_rng, cfg)
  teacher_out = None
  if graphs.teacher is not None:
    teacher_out = teacher_forward(graphs.teacher, teacher_state, x, jnp.dtype(cfg.teacher.dtype))
  grad_fn = jax.value_and_grad(student_loss, has_aux=True)
  (_, (metrics, batch_stats)), grads = grad_fn(state.params, state.batch_stats, graphs,
                                               teacher_out, x, targets, drop_rng, cfg,
                                               step=state.step, teacher_state=teacher_state)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=lr_fn(state.step))
  ema = state.ema
  if ema is not None:
    # Per micro-step decay d^(1/k): over k accumulation steps (params constant) it equals one d step.
    rate = 1.0 - cfg.ema_decay ** (1.0 / max(1, cfg.optim.grad_accum_steps))
    ema = optax.incremental_update({'params': params['student'], 'batch_stats': batch_stats},
                                   ema, step_size=rate)
  new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state, ema=ema)
  # The loss and grads above come from the old params: only this says the new state is finite.
  metrics['state_finite'] = all_finite((params, batch_stats, opt_state, ema))
  return new_state, metrics


def all_finite(tree: Any) -> jax.Array:
  """True when every floating-point leaf of `tree` is free of NaN and inf (one fused reduction)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.bool_(True)


def eval_logits(params: Any, batch_stats: Any, images: jax.Array, *, graph: Any, rest: Any
                ) -> jax.Array:
  """Float32 logits of the model in eval mode on uint8 (or 0-255 float) images."""
  logits, _ = nnx.merge(graph, params, batch_stats, rest)(normalize(images), train=False)
  return logits.astype(jnp.float32)


def eval_step(params: Any, batch_stats: Any, batch: dict[str, jax.Array], *, graph: Any,
              rest: Any) -> dict[str, jax.Array]:
  """Masked sums of correct top-1/top-5 predictions and of the CE loss, for exact accumulation."""
  logits = eval_logits(params, batch_stats, batch['image'], graph=graph, rest=rest)
  mask = batch['mask'].astype(jnp.float32)
  labels = batch['label']
  top5 = jnp.any(jax.lax.top_k(logits, min(5, logits.shape[-1]))[1] == labels[:, None], -1)
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], -1)[:, 0]
  return {'correct': jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
          'correct5': jnp.sum(top5 * mask), 'loss_sum': jnp.sum(ce * mask), 'count': jnp.sum(mask)}
