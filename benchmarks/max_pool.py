"""ResNet's 3x3/2 stem max pool: lkd_jax.models.pool vs XLA's reduce_window vs PyTorch.

    python benchmarks/max_pool.py --json --out benchmarks/results/max_pool_cpu.json

Forward and forward+backward (loss sum(y**2), gradient wrt the input) at the stem's output map
(112x112x64, padding 1) of `pool.max_pool` (strided slices, scatter-free backward), of
`nnx.max_pool` on the -inf padded map (reduce_window; backward = select_and_scatter), and of torch
`max_pool2d` in NCHW. Calls alternate inside each repetition; medians in ms.
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
from depthwise import Timer, add_timer_args, torch_module_fns  # noqa: E402  (benchmarks/depthwise.py)
from torch_side import add_torch_device_arg, torch, torch_device, torch_fields, use_all_cores  # noqa: E402
from emit import add_output_args, device_fields, emit  # noqa: E402
from timing import add_host_malloc_arg, apply_host_malloc, jit  # noqa: E402
from lkd_jax.kernels import pool  # noqa: E402


def reduce_window_pool(x: jax.Array) -> jax.Array:
  """What ResNet used before pool.py: nnx.max_pool (reduce_window) on the -inf padded map."""
  return nnx.max_pool(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf),
                      (3, 3), strides=(2, 2))


def jax_fns(f, x):
  fwd, grad = jit(f), jit(jax.grad(lambda x: jnp.sum(jnp.square(f(x)))))
  return lambda: jax.block_until_ready(fwd(x)), lambda: jax.block_until_ready(grad(x))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add_output_args(p)
  p.add_argument('--batches', default='1,8')
  add_timer_args(p, max_reps=15)
  add_torch_device_arg(p)
  add_host_malloc_arg(p)
  a = p.parse_args(argv)
  host_malloc = apply_host_malloc(a.host_malloc)
  use_all_cores()
  device = torch_device(a.torch_device)
  rows = []
  for b in [int(v) for v in a.batches.split(',')]:
    xn = np.random.default_rng(0).standard_normal((b, 112, 112, 64), dtype=np.float32)
    x = jnp.asarray(xn)
    fns = {}
    for name, f in [('jax_pool', lambda x: pool.max_pool(x, 3, 2, 1)),
                    ('jax_reduce_window', reduce_window_pool)]:
      fns[f'{name}_fwd'], fns[f'{name}_fwd_bwd'] = jax_fns(f, x)
    if torch is not None:
      fns['torch_nchw_fwd'], fns['torch_nchw_fwd_bwd'] = torch_module_fns(
          torch.nn.MaxPool2d(3, 2, 1), np.ascontiguousarray(xn.transpose(0, 3, 1, 2)), False,
          device=device)
    res = Timer(fns, a.budget, a.min_reps, a.max_reps).run()
    row = dict(batch=b, map='112x112x64', **{k: round(v, 2) for k, v in res.items()},
               speedup_fwd_bwd=round(res['jax_reduce_window_fwd_bwd'] / res['jax_pool_fwd_bwd'], 2))
    if torch is not None:
      row['ratio_fwd_bwd'] = round(res['jax_pool_fwd_bwd'] / res['torch_nchw_fwd_bwd'], 2)
    rows.append(row)
    print('#', row, file=sys.stderr, flush=True)
  emit(dict(benchmark='max_pool', **device_fields(), jax=jax.__version__,
            **torch_fields(device), host_malloc=host_malloc, units='ms (median)',
            speedup_definition='reduce_window fwd+bwd / pool fwd+bwd',
            ratio_definition='pool fwd+bwd / torch NCHW fwd+bwd', cases=rows), a.out, a.json)


if __name__ == '__main__':
  main()
