"""LayerNorm statistics as reductions (nnx) vs mat-vec products, in the teachers' eval forward.

    python benchmarks/layer_norm.py --json --out benchmarks/results/layer_norm_cpu.json

Cases, each compiled once per `--impls` entry and timed interleaved (every repetition calls every
variant once, so machine load hits them alike): `dw7x7_ln` = a ConvNeXt block's 7x7 depthwise conv
(depthwise `auto`) + LayerNorm at stage-1 shape, and the whole eval forward of each `--models`
entry at 224 px. Medians and minima in ms; `speedup` = first impl / each impl, by median.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from emit import add_output_args, device_fields, emit  # noqa: E402  (benchmarks/emit.py, beside this script)
from lkd_jax.models import layers, registry  # noqa: E402


def _dw_ln_case(batch: int, impl: str):
  """(jitted fn, args) of depthwise 7x7 + LayerNorm at 56x56x96, traced under LayerNorm `impl`."""
  r = np.random.default_rng(0)
  x = jnp.asarray(r.standard_normal((batch, 56, 56, 96)), jnp.float32)
  k = jnp.asarray(r.standard_normal((7, 7, 96)), jnp.float32)
  ln = layers.layer_norm(96, 1e-6, nnx.Rngs(0))
  graph, state = nnx.split(ln)
  layers.set_layer_norm_impl(impl)
  fn = jax.jit(lambda s, x, k: nnx.merge(graph, s)(layers.depthwise_conv(x, k)))
  jax.block_until_ready(fn(state, x, k))  # compiles under `impl`.
  return fn, (state, x, k)


def _model_case(name: str, batch: int, impl: str):
  """(jitted eval forward, args) of zoo model `name`, traced under LayerNorm `impl`."""
  graph, state = nnx.split(registry.create(name, num_classes=1000, seed=0))
  x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, 224, 224, 3)), jnp.float32)
  layers.set_layer_norm_impl(impl)
  fn = jax.jit(lambda s, x: nnx.merge(graph, s)(x, train=False)[0])
  jax.block_until_ready(fn(state, x))
  return fn, (state, x)


def time_interleaved(fns: dict, reps: int) -> dict[str, list[float]]:
  """Seconds per call of each (fn, args), every repetition calling each once in turn."""
  times = {k: [] for k in fns}
  for _ in range(reps):
    for k, (fn, args) in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[k].append(time.perf_counter() - t)
  return times


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add_output_args(p)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--models', default='convnext_t,slak_t')
  p.add_argument('--impls', default='reduce,dot', help='LayerNorm impls; the first is the baseline')
  p.add_argument('--reps', type=int, default=7)
  a = p.parse_args(argv)
  impls = a.impls.split(',')
  rows = []
  for case in ['dw7x7_ln'] + [m for m in a.models.split(',') if m]:
    fns = {impl: (_dw_ln_case(a.batch, impl) if case == 'dw7x7_ln' else
                  _model_case(case, a.batch, impl)) for impl in impls}
    times = time_interleaved(fns, a.reps)
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    row = dict(case=case, batch=a.batch, reps=a.reps,
               **{f'{k}_ms': round(v, 2) for k, v in med.items()},
               **{f'{k}_min_ms': round(min(v) * 1e3, 2) for k, v in times.items()},
               **{f'speedup_{k}': round(med[impls[0]] / v, 2) for k, v in med.items()})
    rows.append(row)
    print('#', row, file=sys.stderr, flush=True)
  layers.set_layer_norm_impl('auto')
  emit(dict(benchmark='layer_norm', **device_fields(), jax=jax.__version__, impls=impls,
            units='ms per call (median, and min)', cases=rows), a.out, a.json)


if __name__ == '__main__':
  main()
