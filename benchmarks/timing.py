"""Interleaved timing shared by the benchmark scripts, and the host malloc setting they run under."""
from __future__ import annotations

import argparse
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lkd_jax.kernels.xla_options import jit  # the library's jit; the scripts import it from here too.
from lkd_jax.kernels.host_malloc import HOST_MALLOC_MODES, tune_host_malloc


def time_interleaved(fns: dict[str, Callable[[], Any]], reps: int, budget_s: float = math.inf,
                     min_reps: int = 1) -> dict[str, list[float]]:
  """Seconds per call of each blocking zero-argument callable, every repetition running each in turn.

  Each turn calls its function twice and times the second call: the timed call never directly
  follows another program, whose thread pools (PyTorch's OpenMP, XLA's) may still be spinning on
  the same cores and whose buffers have just displaced this one's. Timing alternate single calls
  made PyTorch's 7x7 depthwise forward at 56x56x96 (batch 8) read 15 ms instead of 3-4 ms.
  Stops after `reps`, or once `min_reps` are done and `budget_s` seconds have passed.
  """
  for f in fns.values():  # compile (JAX) / allocator warm-up.
    f()
  times = {k: [] for k in fns}
  start = time.perf_counter()
  for r in range(reps):
    for k, f in fns.items():
      f()
      t = time.perf_counter()
      f()
      times[k].append(time.perf_counter() - t)
    if r + 1 >= min_reps and time.perf_counter() - start > budget_s:
      break
  return times


def compiled_forward(model: nnx.Module, x: jax.Array, under_vjp: bool = False) -> Callable[[], Any]:
  """A blocking call of `model`'s jitted eval forward on `x` (in the forms it was built with),
  compiled now; with `under_vjp`, traced under jax.vjp w.r.t. `x` and the VJP dropped."""
  graph, state = nnx.split(model)
  fwd = lambda s, x: nnx.merge(graph, s)(x, train=False)[0]
  fn = jit((lambda s, x: jax.vjp(lambda x: fwd(s, x), x)[0]) if under_vjp else fwd)
  jax.block_until_ready(fn(state, x))
  return lambda: jax.block_until_ready(fn(state, x))


def compiled_train_grad(model: nnx.Module, x: jax.Array) -> Callable[[], Any]:
  """A blocking call of the jitted gradient w.r.t. `model`'s parameters in train mode (loss = mean
  log-softmax of class 0, in the forms it was built with), compiled now."""
  graph, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p):
    logits, _ = nnx.merge(graph, p, rest, copy=True)(x, train=True)
    return jnp.mean(jax.nn.log_softmax(logits)[:, 0])
  fn = jit(jax.grad(loss))
  jax.block_until_ready(fn(params))
  return lambda: jax.block_until_ready(fn(params))


def medians(times: dict[str, list[float]], scale: float = 1.0) -> dict[str, float]:
  """Median of each list of `time_interleaved`, times `scale` (1e3 for ms)."""
  return {k: float(np.median(v)) * scale for k, v in times.items()}


def add_host_malloc_arg(p: argparse.ArgumentParser) -> None:
  """--host-malloc, as `apply_host_malloc` takes it."""
  p.add_argument('--host-malloc', default='auto', choices=HOST_MALLOC_MODES,
                 help="glibc malloc kept warm for the whole process, PyTorch's side included "
                 "(lkd_jax/kernels/host_malloc.py); 'auto' = 'tuned' where JAX runs on CPU, as lkd_jax.main "
                 "does; 'system' = glibc's defaults")


def apply_host_malloc(mode: str) -> str:
  """Applies --host-malloc (call before any JAX computation); the value for the result JSON."""
  return 'tuned' if tune_host_malloc(mode) else 'system'
