"""Optimizer from config: AdamW, linear warm-up + cosine decay, weight decay off 1-D params, accumulation."""
from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import optax


def weight_decay_mask(params: Any) -> Any:
  """True for params that get weight decay: everything with ndim > 1 (no biases, norms, layer scales)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make(cfg: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: float = 0.0
         ) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
  """(transformation, lr_fn of the micro-step) for `total_steps` micro-steps (MultiSteps if accum > 1).

  `optim.warmup_epochs > 0` overrides `optim.warmup_steps`, converted with `steps_per_epoch` micro-steps.
  """
  o = cfg.optim
  accum = max(1, o.grad_accum_steps)
  updates = max(1, total_steps // accum)
  warmup = o.warmup_steps
  if o.get('warmup_epochs', 0) > 0:
    warmup = int(round(o.warmup_epochs * steps_per_epoch / accum))
  warmup = min(warmup, updates - 1)
  if o.get('schedule', 'cosine') == 'step':  # mmcls step decay: lr * rate at each listed epoch
    per_update = steps_per_epoch / accum
    schedule = optax.piecewise_constant_schedule(
        o.lr, {int(round(e * per_update)): o.decay_rate for e in o.decay_epochs})
  else:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=o.warmup_init_lr, peak_value=o.lr, warmup_steps=warmup, decay_steps=updates,
        end_value=o.min_lr)
  chain = []
  if o.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(o.grad_clip))
  chain.append(_optimizer(o, schedule))
  tx = optax.chain(*chain)
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum)
  return tx, lambda step: schedule(step // accum)


OPTIMIZERS = ('adamw', 'lamb', 'sgd')


def _optimizer(o: ml_collections.ConfigDict, schedule: Any) -> optax.GradientTransformation:
  """optim.name: AdamW (default), LAMB (ScaleKD's advanced recipe) or SGD with momentum and
  torch-style weight decay (added to the gradient before momentum); decay off 1-D params for all."""
  name = o.get('name', 'adamw')
  if name == 'adamw':
    return optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                       mask=weight_decay_mask)
  if name == 'lamb':
    return optax.lamb(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                      mask=weight_decay_mask)
  if name == 'sgd':
    return optax.chain(optax.add_decayed_weights(o.weight_decay, mask=weight_decay_mask),
                       optax.sgd(schedule, momentum=o.momentum))
  raise ValueError(f'optim.name={name!r}; choose one of {", ".join(OPTIMIZERS)}.')
