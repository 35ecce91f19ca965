"""The frozen teacher's share of a distillation step: FLOPs from XLA's cost analysis, time measured.

It tells whether an offline teacher cache (logits/features computed once, read per step) would pay:
a teacher taking most of the step is worth caching, one taking a few percent is not.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import jax


def flops(compiled: Any) -> float:
  """FLOPs of one call of a compiled (jax.stages.Compiled) function, per device, from XLA's cost
  analysis; NaN when the backend does not report them."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per partition
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', float('nan')))


def time_call(fn: Callable[..., Any], *args: Any, repeats: int = 3) -> float:
  """Median wall seconds of `fn(*args)` to completion, after one untimed call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return sorted(times)[len(times) // 2]


def teacher_share(step_flops: float, teacher_flops: float, num_devices: int) -> dict[str, float]:
  """Global GFLOPs per step (teacher forward; student forward/backward and update) from per-device
  FLOPs, and the teacher's FLOP share."""
  return {'step_gflops': step_flops * num_devices / 1e9,
          'teacher_gflops': teacher_flops * num_devices / 1e9,
          'student_gflops': (step_flops - teacher_flops) * num_devices / 1e9,
          'teacher_flop_share': teacher_flops / step_flops if step_flops > 0 else float('nan')}


def time_share(step_seconds: float, teacher_seconds: float) -> dict[str, float]:
  """The measured step and teacher-forward times (ms) and the teacher's share of the step."""
  return {'step_ms': 1e3 * step_seconds, 'teacher_ms': 1e3 * teacher_seconds,
          'teacher_time_share': teacher_seconds / step_seconds}


def describe(record: dict[str, float]) -> str:
  """One log line for a teacher_share record, with its time_share when measured."""
  text = (f'Teacher cost: forward {record["teacher_gflops"]:.3g} of {record["step_gflops"]:.3g} '
          f'GFLOP per step ({100 * record["teacher_flop_share"]:.1f}%; student forward/backward '
          f'and update {record["student_gflops"]:.3g})')
  if 'teacher_time_share' in record:
    text += (f'; measured {record["teacher_ms"]:.1f} of {record["step_ms"]:.1f} ms per step '
             f'({100 * record["teacher_time_share"]:.1f}%)')
  return text + '.'
