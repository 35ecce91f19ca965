"""Seconds per image of the ERF computation (lkd_jax/analysis/erf.py) at S x S, JAX vs PyTorch.

    python benchmarks/erf.py --json --out benchmarks/results/erf_cpu.json
    python benchmarks/erf.py --models slak_t --reps 1 --json

JAX: the library's own jitted, sharded ERF function (`erf.compiled_batch_erf`: normalise, eval
forward to stage4, ReLU'd centre score, gradient w.r.t. the normalised input, ReLU, sum over RGB,
NaN check, sum over the batch) on a batch of real photographs (../shared/data/imagenet-sample,
resized to S x S), randomly initialised weights. PyTorch (when torch is installed): the same
computation as the reference scripts do it (autograd.grad of the score w.r.t. the normalised input)
on benchmarks/kd_step.py's PyTorch models. Timed interleaved (benchmarks/timing.py); `*_s_per_image`
= median seconds per call / batch; `init_s`: the model's random initialisation (registry.create);
`compile_s`: JAX's trace, compile and first call.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from emit import add_output_args, device_fields, emit  # noqa: E402  (benchmarks/emit.py, beside this script)
from lkd_jax import sharding  # noqa: E402
from lkd_jax.analysis import erf  # noqa: E402
from lkd_jax import kernels  # noqa: E402
from lkd_jax.models import registry  # noqa: E402
from timing import add_host_malloc_arg, apply_host_malloc, time_interleaved  # noqa: E402

from torch_side import (add_torch_device_arg, leave_gpu_memory_for_torch, synced, torch,  # noqa: E402
                        torch_device, torch_fields, use_all_cores)

if torch is not None:
  from kd_step import TORCH_MODELS, no_torch_model_note  # noqa: E402  (benchmarks/kd_step.py: the same PyTorch models)

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'data',
                      'imagenet-sample')
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def images(spec: str, batch: int, size: int) -> np.ndarray:
  """The first `batch` images of `spec`, resized to size x size (uint8 NHWC)."""
  source, n = erf.image_source(spec, batch)
  return np.stack([erf.resize(img, size) for img in source])


def jax_erf(model: nnx.Module, x: np.ndarray):
  """A blocking call of the library's compiled ERF function of `model` on `x`, compiled now."""
  mesh = sharding.make_mesh()
  graph, state = nnx.split(model)
  state = sharding.put_replicated(state, mesh)
  fn = erf.compiled_batch_erf(graph, mesh)
  arrays = sharding.global_batch({'image': x, 'mask': np.ones(len(x), bool)}, mesh)
  call = lambda: jax.block_until_ready(fn(state, arrays['image'], arrays['mask']))
  call()
  return call


def torch_stage4(model, x):
  """kd_step's PyTorch ResNet-50 / ConvNeXt-like models up to the last stage's map (NCHW)."""
  if hasattr(model, 'blocks'):
    return model.blocks(model.stem(x))
  for down, stage in zip(model.down, model.stages):
    x = stage(down(x))
  return x


def torch_erf(name: str, x: np.ndarray, device: str):
  """A blocking call of the reference computation in PyTorch on `x`: the map summed over the batch."""
  model = TORCH_MODELS[name]().eval().to(device)
  pixels = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)
  mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
  std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

  def f():
    inp = ((pixels.float() / 255 - mean) / std).requires_grad_(True)
    out = torch_stage4(model, inp)
    h, w = out.shape[2:]
    score = torch.nn.functional.relu(out[:, :, h // 2, w // 2]).sum()
    grad, = torch.autograd.grad(score, inp)
    return torch.nn.functional.relu(grad).sum((0, 1))
  return synced(f, device)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add_output_args(p)
  p.add_argument('--models', default='resnet50,slak_t')
  p.add_argument('--size', type=int, default=1024)
  p.add_argument('--batch', type=int, default=0, help='images per call (default: one per device)')
  p.add_argument('--reps', type=int, default=2)
  p.add_argument('--images', default=SAMPLE, help='as python -m lkd_jax.erf --images takes them')
  add_torch_device_arg(p)
  add_host_malloc_arg(p)
  a = p.parse_args(argv)
  leave_gpu_memory_for_torch(a.torch_device)
  host_malloc = apply_host_malloc(a.host_malloc)
  use_all_cores()
  device = torch_device(a.torch_device)
  batch = a.batch or jax.device_count()
  x = images(a.images, batch, a.size)
  chosen = kernels.resolve({}, jax.default_backend())  # the forms a run computes with here.
  rows, notes = [], []
  for name in a.models.split(','):
    t0 = time.perf_counter()
    model = registry.create(name, num_classes=1000, seed=0, kernels=chosen)
    t1 = time.perf_counter()
    fns = {'jax': jax_erf(model, x)}
    init_s, compile_s = round(t1 - t0, 1), round(time.perf_counter() - t1, 1)
    if torch is not None:
      if name in TORCH_MODELS:
        fns['torch'] = torch_erf(name, x, device)
      else:
        notes.append(no_torch_model_note(name))
    times = time_interleaved(fns, a.reps)
    row = dict(model=name, size=a.size, batch=batch, reps=a.reps, init_s=init_s, compile_s=compile_s,
               **{f'{k}_s_per_image': round(float(np.median(v)) / batch, 3) for k, v in times.items()},
               **{f'{k}_min_s_per_image': round(min(v) / batch, 3) for k, v in times.items()})
    if 'torch' in times:
      row['ratio_jax_torch'] = round(row['jax_s_per_image'] / row['torch_s_per_image'], 3)
    rows.append(row)
    print('#', row, file=sys.stderr, flush=True)
  emit(dict(benchmark='erf', **device_fields(), jax=jax.__version__, **torch_fields(device),
            notes=notes, images=os.path.relpath(a.images) if os.path.isdir(a.images) else a.images,
            weights='random init (seed 0); the cost does not depend on the values',
            depthwise_impl=chosen.depthwise, kernels=dataclasses.asdict(chosen),
            host_malloc=host_malloc,
            units='seconds per image (median, and min)', cases=rows), a.out, a.json)


if __name__ == '__main__':
  main()
