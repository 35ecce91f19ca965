"""Learnable student -> teacher feature projectors for FD, feature-shape probing, and student export.

Projector parameters live in the student's TrainState under params['projector'] (optimised with the
student, checkpointed with it) and are dropped by `export_student` (projectors are training-only,
as in FD/LK-KD where the `projects` modules are unused at inference).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _torch_uniform(bound: float):
  """U(-bound, bound): torch's default Conv1d/Linear init (kaiming_uniform a=sqrt(5) == bound 1/sqrt(fan_in))."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class Projector1x1(nnx.Module):
  """A 1x1 convolution (per-position Linear over channels) on an NHWC map, torch Conv1d(k=1) init."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
    bound = 1.0 / math.sqrt(cin)
    self.proj = nnx.Linear(cin, cout, kernel_init=_torch_uniform(bound),
                           bias_init=_torch_uniform(bound), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.proj(x.astype(jnp.float32))


class FeatureProjectors(nnx.Module):
  """One 1x1 projector per distilled stage (FD of Wei et al. 2022 / LK-KD: Conv1d 1x1, student C -> teacher C).

  Calling it maps {stage: student NHWC map} -> {stage: projected map} for the configured stages only.
  """

  def __init__(self, channels: dict[str, tuple[int, int]], *, rngs: nnx.Rngs):
    self.stages = tuple(channels)
    for stage, (c_s, c_t) in channels.items():
      setattr(self, stage, Projector1x1(c_s, c_t, rngs=rngs))

  def __call__(self, student_feats: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {s: getattr(self, s)(student_feats[s]) for s in self.stages}


FEATURE_STAGES = ('stage1', 'stage2', 'stage3', 'stage4')  # every model's feats keys (DESIGN §3)


def parse_stages(stages: str | Sequence[str]) -> tuple[str, ...]:
  """'stage4' or 'stage3+stage4' (config strings cannot hold commas) or a sequence -> tuple of names."""
  if isinstance(stages, str):
    stages = [s for s in stages.replace(' ', '+').split('+') if s]
  out = tuple(stages)
  if not out:
    raise ValueError('fd_stages is empty; name at least one stage, e.g. fd_stages=stage4.')
  unknown = [s for s in out if s not in FEATURE_STAGES]
  if unknown:
    raise ValueError(f'fd_stages {unknown} are not feature maps; every model has '
                     f'{"+".join(FEATURE_STAGES)}.')
  return out


def build(stages: Sequence[str], student_feats: dict[str, Any], teacher_feats: dict[str, Any],
          seed: int) -> FeatureProjectors:
  """Projectors for `stages` from feature shapes (anything with .shape, NHWC)."""
  missing = [s for s in stages if s not in student_feats or s not in teacher_feats]
  if missing:
    raise ValueError(f'fd_stages {missing} not in the feature maps; student has '
                     f'{sorted(student_feats)}, teacher has {sorted(teacher_feats)}.')
  channels = {s: (int(student_feats[s].shape[-1]), int(teacher_feats[s].shape[-1])) for s in stages}
  return FeatureProjectors(channels, rngs=nnx.Rngs(params=jax.random.fold_in(
      jax.random.key(seed), 0x9D)))


def feature_shapes(model: nnx.Module | tuple[Any, Any], image_size: int
                   ) -> dict[str, jax.ShapeDtypeStruct]:
  """{stage: ShapeDtypeStruct} of a model's eval-mode feature maps for one image (jax.eval_shape: no FLOPs).

  `model` is a module or its `(graphdef, state)`.
  """
  graph, state = nnx.split(model) if isinstance(model, nnx.Module) else model

  def feats(state, x):
    return nnx.merge(graph, state, copy=True)(x, train=False)[1]

  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(feats, state, x)


def export_student(params: Any) -> Any:
  """The student-only parameters of a TrainState's params (projectors dropped), for export/inference."""
  if isinstance(params, dict) and 'student' in params:
    return params['student']
  raise ValueError("export_student expects TrainState.params = {'student': ..., 'projector': ...}.")
