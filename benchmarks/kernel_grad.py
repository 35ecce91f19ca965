"""The shift depthwise form's backward variants in a model's gradient (ConvNeXt-T's 7x7 kernels).

    python benchmarks/kernel_grad.py --json --out benchmarks/results/kernel_grad_cpu.json

Variants (the `kernel_grad` and `materialize` of the model's kernels.DepthwiseOptions; the rest of
its forms as `auto` resolves them on this platform): `before` = the FFT correlation kernel gradient
and no materialized outputs (the earlier rule for >= 49 taps); `fft`, `tree` = that kernel gradient
for every kernel, outputs materialized; `auto` = the library's rule (`kernel_grad_form`).
Timed: the gradient w.r.t. the parameters of each `--models` entry in train mode at 224 px (loss =
mean log-softmax of class 0; --size to change it), all variants interleaved (benchmarks/timing.py). Medians and minima in
ms; `speedup` = before / each variant, by median.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from emit import add_output_args, device_fields, emit  # noqa: E402  (benchmarks/emit.py, beside this script)
from lkd_jax import kernels  # noqa: E402
from lkd_jax.models import registry  # noqa: E402
from timing import add_host_malloc_arg, apply_host_malloc, compiled_train_grad, time_interleaved  # noqa: E402

# variant: (kernel_grad, materialize); ConvNeXt's kernels are all 7x7 (49 taps: 'fft' before).
VARIANTS = {'before': ('fft', False), 'fft': ('fft', True), 'tree': ('tree', True),
            'auto': ('auto', True)}


def _grad_fn(name: str, batch: int, size: int, variant: str):
  """A blocking call of `name`'s parameter gradient (train mode), built with `variant`'s options."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 3)), jnp.float32)
  grad, materialize = VARIANTS[variant]
  chosen = dataclasses.replace(
      kernels.resolve({}, jax.default_backend()),
      depthwise_options=kernels.DepthwiseOptions(kernel_grad=grad, materialize=materialize))
  return compiled_train_grad(registry.create(name, num_classes=1000, seed=0, kernels=chosen), x)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add_output_args(p)
  p.add_argument('--models', default='convnext_t')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--size', type=int, default=224)
  p.add_argument('--reps', type=int, default=7)
  add_host_malloc_arg(p)
  a = p.parse_args(argv)
  host_malloc = apply_host_malloc(a.host_malloc)
  rows = []
  for name in a.models.split(','):
    fns = {v: _grad_fn(name, a.batch, a.size, v) for v in VARIANTS}
    times = time_interleaved(fns, a.reps)
    med = {v: float(np.median(t)) * 1e3 for v, t in times.items()}
    rows.append(dict(model=name, batch=a.batch, size=a.size, reps=a.reps,
                     **{f'{v}_ms': round(m, 1) for v, m in med.items()},
                     **{f'{v}_min_ms': round(min(t) * 1e3, 1) for v, t in times.items()},
                     **{f'speedup_{v}': round(med['before'] / m, 3) for v, m in med.items()}))
  emit(dict(benchmark='kernel_grad', **device_fields(), jax=jax.__version__, host_malloc=host_malloc,
            units='ms per gradient (median, and min)',
            cases=rows), a.out, a.json)


if __name__ == '__main__':
  main()
