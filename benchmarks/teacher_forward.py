"""A frozen teacher's eval forward: the depthwise inference forms `auto` picks vs its training forms,
and the depthwise convolutions' share of it, JAX vs PyTorch.

    python benchmarks/teacher_forward.py --json --out benchmarks/results/teacher_forward_cpu.json

`auto` may pair two depthwise forms, 'inference/training' (lkd_jax/kernels/depthwise.py): a call no
gradient flows through (the frozen teacher in the KD step) runs the first. Every model computes with
the forms `auto` resolves to on this platform (kernels.resolve; the result's `kernels`). Variants,
each compiled once and timed interleaved (benchmarks/timing.py: every repetition gives each a turn,
so machine load hits them alike):
- `inference`: the plain jitted eval forward, as the KD step runs the teacher;
- `training_forms`: the same forward traced under `jax.vjp` w.r.t. the input, the VJP dropped, so
  every depthwise conv runs its training form's forward (what `auto` ran before the pairs);
- `merged` / `merged_decom` (SLaK only): `inference_form='merged'` / `'merged_decom'`, each unit's
  three branches folded into one KxK kernel / into a KxN and an NxK kernel (`slak.merge_large_kernels`,
  on a copy), as `teacher.inference_form=merged` / `merged_decom` loads it;
- `without_depthwise`: `inference` with every depthwise convolution replaced by the identity (its
  BatchNorm / bias, branch sum and the rest of the block kept), so `depthwise_ms` = inference -
  without_depthwise is what the depthwise convolutions cost inside the model;
- `merged_decom_bands_N` (SLaK only, `--shift-cb-bands N,...`): `merged_decom` with `shift_cb`'s
  long kernels cut into N bands of output rows (kernels.DepthwiseOptions.bands) instead of the default;
- `torch_inference` / `torch_without_depthwise` (when torch is installed): benchmarks/kd_step.py's
  PyTorch teacher (NCHW, no_grad, eval), and the same with every grouped Conv2d replaced by
  nn.Identity (ConvNeXt's depthwise bias goes with it).
Medians and minima in ms; `speedup_*` = training_forms / variant, by median; `compile_s`: each JAX
variant's trace, compile and first call.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from emit import add_output_args, device_fields, emit  # noqa: E402  (benchmarks/emit.py, beside this script)
from lkd_jax import kernels  # noqa: E402
from lkd_jax.models import layers, registry  # noqa: E402
from lkd_jax.models.slak import merge_large_kernels  # noqa: E402
from timing import add_host_malloc_arg, apply_host_malloc, compiled_forward, time_interleaved  # noqa: E402

from torch_side import (add_torch_device_arg, leave_gpu_memory_for_torch, synced, torch,  # noqa: E402
                        torch_device, torch_fields, use_all_cores)

if torch is not None:
  from kd_step import TORCH_MODELS, no_torch_model_note  # noqa: E402  (benchmarks/kd_step.py: the same PyTorch teachers)


class BiasOnly(nnx.Module):
  """A DepthwiseConv without its convolution: the input plus the conv's bias, if any."""

  def __init__(self, conv: layers.DepthwiseConv):
    self.bias = conv.bias

  def __call__(self, x):
    return x if self.bias is None else x + self.bias[...]


def without_depthwise(model: nnx.Module) -> nnx.Module:
  """A copy of `model` whose depthwise convolutions are the identity (their biases kept)."""
  model = nnx.clone(model)
  for _, parent in list(nnx.iter_modules(model)):
    for name, child in list(vars(parent).items()):
      if isinstance(child, layers.DepthwiseConv):
        setattr(parent, name, BiasOnly(child))
  return model


def with_bands(chosen: kernels.Kernels, bands: int) -> kernels.Kernels:
  """`chosen` with `shift_cb`'s long kernels in `bands` bands of output rows."""
  options = dataclasses.replace(chosen.depthwise_options, bands=bands)
  return dataclasses.replace(chosen, depthwise_options=options)


def torch_forwards(name, x, device: str = 'cpu'):
  """Blocking no_grad eval forwards of the PyTorch teacher on `device`, as built and without
  grouped convs."""
  full, bare = (TORCH_MODELS[name]().eval().to(device) for _ in range(2))
  for parent in list(bare.modules()):
    for child_name, child in parent.named_children():
      if isinstance(child, torch.nn.Conv2d) and child.groups > 1:
        setattr(parent, child_name, torch.nn.Identity())
  xt = torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))).to(device)

  def run(m):
    def f():
      with torch.no_grad():
        m(xt)
    return synced(f, device)
  return {'torch_inference': run(full), 'torch_without_depthwise': run(bare)}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add_output_args(p)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--size', type=int, default=224)
  p.add_argument('--models', default='slak_t,convnext_t')
  p.add_argument('--reps', type=int, default=7)
  p.add_argument('--shift-cb-bands', type=lambda v: [int(n) for n in v.split(',')], default=[],
                 help="also time SLaK's merged_decom with shift_cb's long kernels in these many bands")
  add_torch_device_arg(p)
  add_host_malloc_arg(p)
  a = p.parse_args(argv)
  leave_gpu_memory_for_torch(a.torch_device)
  host_malloc = apply_host_malloc(a.host_malloc)
  use_all_cores()
  device = torch_device(a.torch_device)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((a.batch, a.size, a.size, 3)), jnp.float32)
  chosen = kernels.resolve({}, jax.default_backend())
  rows, notes = [], []
  for name in a.models.split(','):
    model = registry.create(name, num_classes=1000, seed=0, kernels=chosen)
    if torch is not None and name not in TORCH_MODELS:
      notes.append(no_torch_model_note(name))
    builds = {'training_forms': functools.partial(compiled_forward, model, x, True),
              'inference': functools.partial(compiled_forward, model, x)}
    if name.startswith('slak'):
      for form in ('merged', 'merged_decom'):
        builds[form] = functools.partial(compiled_forward, merge_large_kernels(nnx.clone(model), form), x)
      for n in a.shift_cb_bands:  # the same weights (seed 0), built with `n` bands.
        banded = registry.create(name, num_classes=1000, seed=0, kernels=with_bands(chosen, n))
        builds[f'merged_decom_bands_{n}'] = functools.partial(
            compiled_forward, merge_large_kernels(banded, 'merged_decom'), x)
    builds['without_depthwise'] = functools.partial(compiled_forward, without_depthwise(model), x)
    fns, compile_s = {}, {}
    for k, build in builds.items():
      t0 = time.perf_counter()
      fns[k] = build()
      compile_s[k] = round(time.perf_counter() - t0, 1)
    if torch is not None and name in TORCH_MODELS:
      fns |= torch_forwards(name, x, device)
    times = time_interleaved(fns, a.reps)
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    row = dict(model=name, batch=a.batch, size=a.size, reps=a.reps,
               **{f'{k}_ms': round(v, 1) for k, v in med.items()},
               **{f'{k}_min_ms': round(min(v) * 1e3, 1) for k, v in times.items()},
               **{f'speedup_{k}': round(med['training_forms'] / v, 3) for k, v in med.items()
                  if not k.startswith('torch')},
               depthwise_ms=round(med['inference'] - med['without_depthwise'], 1), compile_s=compile_s)
    if 'torch_inference' in med:
      row |= dict(torch_depthwise_ms=round(med['torch_inference'] - med['torch_without_depthwise'], 1),
                  ratio_inference=round(med['inference'] / med['torch_inference'], 3))
    rows.append(row)
    print('#', row, file=sys.stderr, flush=True)
  emit(dict(benchmark='teacher_forward', **device_fields(), jax=jax.__version__,
            **torch_fields(device), notes=notes,
            depthwise_impl=chosen.depthwise, kernels=dataclasses.asdict(chosen),
            host_malloc=host_malloc,
            units='ms per forward (median, and min)', cases=rows), a.out, a.json)


if __name__ == '__main__':
  main()
