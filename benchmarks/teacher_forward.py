"""A frozen teacher's eval forward: the depthwise inference forms `auto` picks vs its training forms.

    python benchmarks/teacher_forward.py --json --out benchmarks/results/teacher_forward_cpu.json

`auto` may pair two depthwise forms, 'inference/training' (lkd_jax/models/depthwise.py): a call no
gradient flows through (the frozen teacher in the KD step) runs the first. Variants, each compiled
once and timed interleaved (benchmarks/timing.py: every repetition gives each a turn, so machine
load hits them alike):
- `inference`: the plain jitted eval forward, as the KD step runs the teacher;
- `training_forms`: the same forward traced under `jax.vjp` w.r.t. the input, the VJP dropped, so
  every depthwise conv runs its training form's forward (what `auto` ran before the pairs);
- `merged` (SLaK only): `inference_form='merged'`, each unit's three branches folded into one KxK
  kernel (`slak.merge_large_kernels`), as `teacher.inference_form=merged` loads it.
Medians and minima in ms; `speedup_*` = training_forms / variant, by median.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from emit import add_output_args, device_fields, emit  # noqa: E402  (benchmarks/emit.py, beside this script)
from lkd_jax.models import depthwise as dw  # noqa: E402
from lkd_jax.models import registry  # noqa: E402
from lkd_jax.models.slak import merge_large_kernels  # noqa: E402
from timing import add_host_malloc_arg, apply_host_malloc, compiled_forward, time_interleaved  # noqa: E402


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add_output_args(p)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--size', type=int, default=224)
  p.add_argument('--models', default='slak_t,convnext_t')
  p.add_argument('--reps', type=int, default=7)
  add_host_malloc_arg(p)
  a = p.parse_args(argv)
  host_malloc = apply_host_malloc(a.host_malloc)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((a.batch, a.size, a.size, 3)), jnp.float32)
  rows = []
  for name in a.models.split(','):
    model = registry.create(name, num_classes=1000, seed=0)
    fns = {'training_forms': compiled_forward(model, x, True), 'inference': compiled_forward(model, x)}
    if name.startswith('slak'):
      fns['merged'] = compiled_forward(merge_large_kernels(model), x)
    times = time_interleaved(fns, a.reps)
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    row = dict(model=name, batch=a.batch, size=a.size, reps=a.reps,
               **{f'{k}_ms': round(v, 1) for k, v in med.items()},
               **{f'{k}_min_ms': round(min(v) * 1e3, 1) for k, v in times.items()},
               **{f'speedup_{k}': round(med['training_forms'] / v, 3) for k, v in med.items()})
    rows.append(row)
    print('#', row, file=sys.stderr, flush=True)
  emit(dict(benchmark='teacher_forward', **device_fields(), jax=jax.__version__,
            depthwise_impl=dw.get_depthwise_impl(), host_malloc=host_malloc, units='ms per forward (median, and min)',
            cases=rows), a.out, a.json)


if __name__ == '__main__':
  main()
