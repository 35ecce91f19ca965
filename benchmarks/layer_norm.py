"""LayerNorm statistics as reductions (nnx) vs mat-vec products, in the teachers' eval forward.

    python benchmarks/layer_norm.py --json --out benchmarks/results/layer_norm_cpu.json
    python benchmarks/layer_norm.py --json --train --models convnext_t --impls reduce,dot/reduce

Cases, each compiled once per `--impls` entry and timed interleaved (benchmarks/timing.py: every
repetition gives every variant a turn, so machine load hits them alike): `dw7x7_ln` = a ConvNeXt block's 7x7 depthwise conv
(depthwise `auto`) + LayerNorm at stage-1 shape, and the whole eval forward of each `--models`
entry at 224 px (with --train: the gradient w.r.t. its parameters in train mode instead, as a
student's step computes it). Medians and minima in ms; `speedup` = first impl / each impl, by median.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from emit import add_output_args, device_fields, emit  # noqa: E402  (benchmarks/emit.py, beside this script)
from lkd_jax import kernels  # noqa: E402
from lkd_jax.kernels.depthwise import depthwise_conv  # noqa: E402
from lkd_jax.models import layers, registry  # noqa: E402
from timing import (add_host_malloc_arg, apply_host_malloc, compiled_forward, compiled_train_grad,  # noqa: E402
                    jit, time_interleaved)


def _dw_ln_case(batch: int, impl: str):
  """A blocking call of depthwise 7x7 + LayerNorm at 56x56x96, the LayerNorm's statistics in `impl`."""
  r = np.random.default_rng(0)
  x = jnp.asarray(r.standard_normal((batch, 56, 56, 96)), jnp.float32)
  k = jnp.asarray(r.standard_normal((7, 7, 96)), jnp.float32)
  chosen = _kernels(impl)
  graph, state = nnx.split(layers.layer_norm(96, 1e-6, nnx.Rngs(0), chosen))
  fn = jit(lambda s, x, k: nnx.merge(graph, s)(depthwise_conv(x, k, chosen)))
  jax.block_until_ready(fn(state, x, k))  # compiles now.
  return lambda: jax.block_until_ready(fn(state, x, k))


def _model_case(name: str, batch: int, impl: str, train: bool):
  """A blocking call of zoo model `name`'s eval forward (or train gradient), LayerNorm statistics
  in `impl`."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, 224, 224, 3)), jnp.float32)
  return (compiled_train_grad if train else compiled_forward)(
      registry.create(name, num_classes=1000, seed=0, kernels=_kernels(impl)), x)


def _kernels(impl: str) -> kernels.Kernels:
  """LayerNorm statistics in `impl`, the other forms as `auto` resolves them on this platform."""
  return kernels.resolve({'layer_norm_impl': impl}, jax.default_backend())


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add_output_args(p)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--models', default='convnext_t,slak_t')
  p.add_argument('--impls', default='reduce,dot/reduce',
                 help='LayerNorm statistics forms (kernels.LAYER_NORM_FORMS); the first is the baseline')
  p.add_argument('--reps', type=int, default=7)
  p.add_argument('--train', action='store_true', help='time model gradients (train mode), not forwards')
  add_host_malloc_arg(p)
  a = p.parse_args(argv)
  host_malloc = apply_host_malloc(a.host_malloc)
  impls = a.impls.split(',')
  rows = []
  for case in ([] if a.train else ['dw7x7_ln']) + [m for m in a.models.split(',') if m]:
    fns = {impl: (_dw_ln_case(a.batch, impl) if case == 'dw7x7_ln' else
                  _model_case(case, a.batch, impl, a.train)) for impl in impls}
    times = time_interleaved(fns, a.reps)
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    row = dict(case=case, batch=a.batch, reps=a.reps,
               **{f'{k}_ms': round(v, 2) for k, v in med.items()},
               **{f'{k}_min_ms': round(min(v) * 1e3, 2) for k, v in times.items()},
               **{f'speedup_{k}': round(med[impls[0]] / v, 2) for k, v in med.items()})
    rows.append(row)
    print('#', row, file=sys.stderr, flush=True)
  emit(dict(benchmark='layer_norm', **device_fields(), jax=jax.__version__, impls=impls, train=a.train,
            host_malloc=host_malloc,
            units='ms per call (median, and min)', cases=rows), a.out, a.json)


if __name__ == '__main__':
  main()
