"""Named distillation methods (config `method=`), composed from the pieces in losses.py.

A method's loss is `loss(student_out, teacher_out, targets, projector, cfg) -> (loss, metrics)`,
with `*_out = (logits, feats)`, `targets` the soft targets, `projector` an NNX module or None.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import ml_collections

from lkd_jax.distill import losses

Out = tuple[jax.Array, dict[str, jax.Array]]
LossFn = Callable[[Out, Out | None, jax.Array, Any, ml_collections.ConfigDict],
                  tuple[jax.Array, dict[str, jax.Array]]]


class Method(NamedTuple):
  loss: LossFn
  needs_teacher: bool


def ce(student_out: Out, teacher_out: Out | None, targets: jax.Array, projector: Any,
       cfg: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Supervised training: soft-target cross-entropy only."""
  loss = losses.soft_cross_entropy(student_out[0], targets)
  return loss, {'ce': loss}


def kd(student_out: Out, teacher_out: Out, targets: jax.Array, projector: Any,
       cfg: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(1-alpha) CE + alpha T^2 KL(p_t^T || p_s^T) (Hinton 2015; paper code: alpha 0.1, T 3)."""
  alpha, t = cfg.kd_alpha, cfg.kd_temperature
  ce_loss = losses.soft_cross_entropy(student_out[0], targets)
  kd_loss = losses.kd_kl(student_out[0], teacher_out[0], t)
  return (1 - alpha) * ce_loss + alpha * kd_loss, {'ce': ce_loss, 'kd': kd_loss}


METHODS: dict[str, Method] = {
    'ce': Method(ce, needs_teacher=False),
    'kd': Method(kd, needs_teacher=True),
}


def get(name: str) -> Method:
  """The method registered under `name`; a ValueError lists the known ones otherwise."""
  if name not in METHODS:
    raise ValueError(f'Unknown method {name!r}. Known methods: {", ".join(sorted(METHODS))}.')
  return METHODS[name]


def build_projector(cfg: ml_collections.ConfigDict, student_feats: dict[str, Any],
                    teacher_feats: dict[str, Any] | None, seed: int) -> Any:
  """Learnable student->teacher projector for feature methods; None for logit-only methods."""
  return None
