"""Depthwise convolution, JAX vs PyTorch, at SLaK-T's stage shapes (224 px input).

    python benchmarks/depthwise.py --json --out benchmarks/results/depthwise_cpu.json
    python benchmarks/depthwise.py --json --batches 1 --impls shift,shift_cb,fft,toeplitz   # form sweep

Each case times forward and forward+backward (loss sum(y**2), gradients wrt input and kernel) of the
JAX form picked by `auto` (plus any --impls; lkd_jax/kernels/depthwise.py), and of torch
`nn.Conv2d(groups=C)` in NCHW (PyTorch's default layout and the one SLaK's code uses) and
channels_last. JAX and torch take turns
inside each repetition, so machine load hits both alike, each turn timing its second call
(benchmarks/timing.py); times are medians in ms. The process runs with --host-malloc (default
auto: tuned on CPU).
Kind `slak_unit` is SLaK's large-kernel unit as the model runs it: the Kx5, 5xK and 5x5 convolutions
of one input summed in one jitted function (one Conv2d each on the PyTorch side), because XLA fuses
the sum and a conv's speed alone need not be its speed there.
`ratio` = JAX auto / torch NCHW (the target: <= 1.0); `ratio_vs_best_torch` uses the faster torch layout.
torch is optional (extra `[torch]`); without it the JAX side runs and the JSON says why torch was skipped.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from emit import add_output_args, device_fields, emit  # noqa: E402  (benchmarks/emit.py, beside this script)
from lkd_jax import kernels  # noqa: E402
from lkd_jax.kernels import depthwise as dw  # noqa: E402
from timing import add_host_malloc_arg, apply_host_malloc, jit, medians, time_interleaved  # noqa: E402
from torch_side import add_torch_device_arg, synced, torch, torch_device, torch_fields, use_all_cores  # noqa: E402

# SLaK-T (width 1.3): stage maps at 224 px and kernels (51, 49, 47, 13) x 5; 'merged' is the eval-mode
# KxK kernel (branches summed); slak_unit = Kx5 + 5xK + 5x5 on one input, summed; convnext_7x7 is
# ConvNeXt-T's kernel at its stage shapes.
STAGES = [(56, 124, 51), (28, 249, 49), (14, 499, 47), (7, 998, 13)]
CONVNEXT_T_STAGES = [(56, 96), (28, 192), (14, 384), (7, 768)]


def cases() -> list[dict]:
  out = []
  for s, (hw, c, k) in enumerate(STAGES, 1):
    for kh, kw, kind in [(k, 5, 'Kx5'), (5, k, '5xK'), (5, 5, '5x5'), (k, k, 'merged'), (k, 5, 'slak_unit')]:
      out.append(dict(stage=s, hw=hw, c=c, kh=kh, kw=kw, kind=kind))
  for s, (hw, c) in enumerate(CONVNEXT_T_STAGES, 1):
    out.append(dict(stage=s, hw=hw, c=c, kh=7, kw=7, kind='convnext_7x7'))
  return out


class Timer:
  """Interleaved timing of several callables (timing.time_interleaved); medians in ms and `reps`."""

  def __init__(self, fns: dict, budget_s: float, min_reps: int, max_reps: int):
    self.fns, self.budget, self.min_reps, self.max_reps = fns, budget_s, min_reps, max_reps

  def run(self) -> dict:
    times = time_interleaved(self.fns, self.max_reps, self.budget, self.min_reps)
    return medians(times, 1e3) | {'reps': len(next(iter(times.values())))}


def add_timer_args(p: argparse.ArgumentParser, max_reps: int) -> None:
  """--budget / --min-reps / --max-reps, as `Timer` takes them."""
  p.add_argument('--budget', type=float, default=1.5, help='seconds per case after min reps')
  p.add_argument('--min-reps', type=int, default=3)
  p.add_argument('--max-reps', type=int, default=max_reps)


def case_kernels(cs: dict) -> list[tuple[int, int]]:
  """The (kh, kw) of each convolution a case sums: one, or the three of a SLaK unit."""
  kh, kw = cs['kh'], cs['kw']
  return [(kh, kw), (kw, kh), (5, 5)] if cs['kind'] == 'slak_unit' else [(kh, kw)]


def forms(impl: str) -> kernels.Kernels:
  """Kernels with depthwise form `impl` ('auto', a form or a pair), as a run here resolves it."""
  return kernels.resolve({'depthwise_impl': impl}, jax.default_backend())


def jax_fns(x, ks, impl):
  """(forward, forward+backward) of the sum of depthwise convs of `x` with each kernel in `ks`;
  `impl` is one form for all, or one per kernel joined by '+' (as the `auto` label names them)."""
  impls = [forms(i) for i in (impl.split('+') if '+' in impl else [impl] * len(ks))]
  conv = lambda x, ks: sum(dw.depthwise_conv(x, k, i) for k, i in zip(ks, impls, strict=True))
  fwd = jit(conv)
  grad = jit(jax.grad(lambda x, ks: jnp.sum(jnp.square(conv(x, ks))), (0, 1)))
  return (lambda: jax.block_until_ready(fwd(x, ks)),
          lambda: jax.block_until_ready(grad(x, ks)))


class _Sum(torch.nn.ModuleList if torch is not None else object):
  def forward(self, x):
    return sum(m(x) for m in self)


def torch_conv(kern: np.ndarray) -> 'torch.nn.Conv2d':
  """nn.Conv2d(groups=C, padding=k//2, no bias) holding the (kh, kw, C) kernel `kern`."""
  kh, kw, c = kern.shape
  m = torch.nn.Conv2d(c, c, (kh, kw), padding=(kh // 2, kw // 2), groups=c, bias=False)
  with torch.no_grad():
    m.weight.copy_(torch.from_numpy(np.ascontiguousarray(kern.transpose(2, 0, 1)[:, None])))
  return m


def torch_fns(xn, kerns, channels_last: bool, device: str = 'cpu'):
  return torch_module_fns(_Sum([torch_conv(k) for k in kerns]), xn, channels_last, device=device)


def torch_module_fns(m, xn, channels_last: bool, grad_x: bool = True, device: str = 'cpu'):
  """(forward under no_grad, forward+backward of sum(y**2)) for torch module `m` on NCHW `xn`, on
  `device`, each returning once the device is done."""
  m, x = m.to(device), torch.from_numpy(xn).to(device)
  if channels_last:
    m = m.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  xg = x.clone().requires_grad_(grad_x)

  def fwd():
    with torch.no_grad():
      m(x)

  def fwd_bwd():
    m.zero_grad(set_to_none=True)
    xg.grad = None
    torch.square(m(xg)).sum().backward()
  return synced(fwd, device), synced(fwd_bwd, device)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add_output_args(p)
  p.add_argument('--batches', default='1,8')
  p.add_argument('--impls', default='',
                 help="extra JAX forms to time besides auto, comma-separated; for slak_unit one per "
                 "conv may be joined by '+', e.g. shift_cb/toeplitz+shift_cb/toeplitz+shift")
  p.add_argument('--kinds', default='',
                 help='only these case kinds (Kx5,5xK,5x5,merged,slak_unit,convnext_7x7)')
  p.add_argument('--stages', default='', help='only these stages, e.g. 1,3')
  add_timer_args(p, max_reps=15)
  p.add_argument('--check', action='store_true', help='also report max rel. error of auto vs torch')
  add_torch_device_arg(p)
  add_host_malloc_arg(p)
  a = p.parse_args(argv)
  host_malloc = apply_host_malloc(a.host_malloc)
  threads = use_all_cores()
  device = torch_device(a.torch_device)
  rng = np.random.default_rng(0)
  rows = []
  extra = [i for i in a.impls.split(',') if i]
  for cs in cases():
    if a.kinds and cs['kind'] not in a.kinds.split(','):
      continue
    if a.stages and str(cs['stage']) not in a.stages.split(','):
      continue
    for b in [int(v) for v in a.batches.split(',')]:
      hw, c, kh, kw = cs['hw'], cs['c'], cs['kh'], cs['kw']
      xn = rng.standard_normal((b, hw, hw, c), dtype=np.float32)
      kns = [(rng.standard_normal((i, j, c), dtype=np.float32) / np.sqrt(i * j)).astype(np.float32)
             for i, j in case_kernels(cs)]
      x, ks = jnp.asarray(xn), [jnp.asarray(k_) for k_ in kns]
      # 'auto' itself runs (per conv); the label names what it picked for each.
      auto = '+'.join(dw.pick_auto(x.shape, k_.shape, jax.default_backend()) for k_ in ks)
      fns = {}
      for impl in ['auto'] + [i for i in extra if i != auto]:
        f, g = jax_fns(x, ks, impl)
        name = auto if impl == 'auto' else impl
        fns[f'jax_{name}_fwd'], fns[f'jax_{name}_fwd_bwd'] = f, g
      if torch is not None:
        xt = np.ascontiguousarray(xn.transpose(0, 3, 1, 2))
        for cl, tag in [(False, 'nchw'), (True, 'channels_last')]:
          f, g = torch_fns(xt, kns, cl, device)
          fns[f'torch_{tag}_fwd'], fns[f'torch_{tag}_fwd_bwd'] = f, g
      t0 = time.perf_counter()
      res = Timer(fns, a.budget, a.min_reps, a.max_reps).run()
      row = dict(cs, batch=b, kernel='+'.join(f'{i}x{j}' for i, j in case_kernels(cs)), auto_impl=auto,
                 kernel_after_crop=f'{min(kh, 2 * hw - 1)}x{min(kw, 2 * hw - 1)}', **res,
                 wall_s=round(time.perf_counter() - t0, 2))
      row['jax_fwd'], row['jax_fwd_bwd'] = res[f'jax_{auto}_fwd'], res[f'jax_{auto}_fwd_bwd']
      if torch is not None:
        for mode in ('fwd', 'fwd_bwd'):
          tn, tc = res[f'torch_nchw_{mode}'], res[f'torch_channels_last_{mode}']
          row[f'ratio_{mode}'] = round(row[f'jax_{mode}'] / tn, 3)
          row[f'ratio_vs_best_torch_{mode}'] = round(row[f'jax_{mode}'] / min(tn, tc), 3)
        row['ratio'] = row['ratio_fwd_bwd']
        if a.check:
          with torch.no_grad():
            yt = _Sum([torch_conv(k_) for k_ in kns])(torch.from_numpy(
                np.ascontiguousarray(xn.transpose(0, 3, 1, 2)))).numpy()
          yj = sum(dw.depthwise_conv(x, k_, forms('auto')) for k_ in ks)
          yj = np.asarray(yj).transpose(0, 3, 1, 2)
          row['max_rel_err_vs_torch'] = float(np.abs(yj - yt).max() / np.abs(yt).max())
      rows.append(row)
      print(f"# s{cs['stage']} {hw}x{hw}x{c} {kh}x{kw} b{b} auto={auto}: "
            + ' '.join(f'{k_}={v:.2f}' for k_, v in res.items() if k_ != 'reps'),
            file=sys.stderr, flush=True)
  out = dict(
      benchmark='depthwise', **device_fields(),
      jax=jax.__version__, **torch_fields(device), torch_threads=threads, host_malloc=host_malloc,
      units='ms (median)', ratio_definition='JAX auto fwd+bwd / torch NCHW fwd+bwd',
      cases=rows)
  emit(out, a.out, a.json)


if __name__ == '__main__':
  main()
