"""Dense convolution, JAX `xla` vs `matmul` forms vs PyTorch, at ResNet-50's and ConvNeXt-T's shapes.

    python benchmarks/dense_conv.py --json --out benchmarks/results/dense_conv_cpu.json

Each case times forward and forward+backward (loss sum(y**2); gradients wrt input and kernel, or
kernel only for the stems, whose input is the image) of `lkd_jax.kernels.conv` in form `xla`
(lax.conv_general_dilated) and `matmul` (pointwise / patchify 2-D matmul, or XLA conv with the
im2col-by-rows kernel gradient), and of torch `nn.Conv2d` in NCHW and channels_last. `auto_form` is
the form `auto` takes on this host (kernels.resolve: `matmul`'s on CPU, but `xla` for kxk convs on
AVX-512 hosts). JAX jits take the library's compiler options (lkd_jax/kernels/xla_options.py).
Calls alternate inside each repetition; times are medians in ms (224 px input). `ratio` = JAX auto
fwd+bwd / torch NCHW fwd+bwd; `speedup` = JAX xla / JAX matmul fwd+bwd.
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
from depthwise import Timer, add_timer_args, torch_module_fns  # noqa: E402  (benchmarks/depthwise.py)
from torch_side import add_torch_device_arg, torch, torch_device, torch_fields, use_all_cores  # noqa: E402
from emit import add_output_args, device_fields, emit  # noqa: E402
from timing import add_host_malloc_arg, apply_host_malloc, jit  # noqa: E402
from lkd_jax import kernels  # noqa: E402
from lkd_jax.kernels import conv  # noqa: E402

# (name, input hw, cin, cout, k, stride, pad): every distinct conv shape of ResNet-50 (torchvision
# v1.5, stride on the 3x3) and ConvNeXt-T's patchify stem / downsampler.
CASES = [('r50_stem_7x7s2', 224, 3, 64, 7, 2, 3),
         ('r50_l1_1x1_64_64', 56, 64, 64, 1, 1, 0), ('r50_l1_3x3_64', 56, 64, 64, 3, 1, 1),
         ('r50_l1_1x1_64_256', 56, 64, 256, 1, 1, 0), ('r50_l1_1x1_256_64', 56, 256, 64, 1, 1, 0),
         ('r50_l2_3x3s2_128', 56, 128, 128, 3, 2, 1), ('r50_l2_down_1x1s2', 56, 256, 512, 1, 2, 0),
         ('r50_l2_3x3_128', 28, 128, 128, 3, 1, 1), ('r50_l2_1x1_512_128', 28, 512, 128, 1, 1, 0),
         ('r50_l3_3x3_256', 14, 256, 256, 3, 1, 1), ('r50_l3_1x1_1024_256', 14, 1024, 256, 1, 1, 0),
         ('r50_l4_3x3_512', 7, 512, 512, 3, 1, 1), ('r50_l4_1x1_2048_512', 7, 2048, 512, 1, 1, 0),
         ('convnext_stem_4x4s4', 224, 3, 96, 4, 4, 0), ('convnext_down_2x2s2', 56, 96, 192, 2, 2, 0)]


def jax_fns(x, w, stride, pad, impl, grad_x: bool):
  def f(x, w):
    return conv.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'), impl=impl)
  fwd = jit(f)
  grad = jit(jax.grad(lambda x, w: jnp.sum(jnp.square(f(x, w))), (0, 1) if grad_x else 1))
  return (lambda: jax.block_until_ready(fwd(x, w)),
          lambda: jax.block_until_ready(grad(x, w)))


def torch_fns(xn, wn, stride, pad, channels_last: bool, grad_x: bool, device: str = 'cpu'):
  k, _, ci, co = wn.shape
  m = torch.nn.Conv2d(ci, co, k, stride=stride, padding=pad, bias=False)
  with torch.no_grad():
    m.weight.copy_(torch.from_numpy(np.ascontiguousarray(wn.transpose(3, 2, 0, 1))))
  return torch_module_fns(m, np.ascontiguousarray(xn.transpose(0, 3, 1, 2)), channels_last, grad_x,
                          device)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add_output_args(p)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--only', default='', help='only these case names, comma-separated')
  add_timer_args(p, max_reps=11)
  add_torch_device_arg(p)
  add_host_malloc_arg(p)
  a = p.parse_args(argv)
  host_malloc = apply_host_malloc(a.host_malloc)
  use_all_cores()
  device = torch_device(a.torch_device)
  rng = np.random.default_rng(0)
  auto_impl = kernels.resolve({}, jax.default_backend()).conv
  rows = []
  for name, hw, ci, co, k, s, pad in CASES:
    if a.only and name not in a.only.split(','):
      continue
    grad_x = 'stem' not in name
    xn = rng.standard_normal((a.batch, hw, hw, ci), dtype=np.float32)
    wn = (rng.standard_normal((k, k, ci, co), dtype=np.float32) / np.sqrt(k * k * ci)).astype(np.float32)
    x, w = jnp.asarray(xn), jnp.asarray(wn)
    fns = {}
    for impl in ('xla', 'matmul'):
      fns[f'jax_{impl}_fwd'], fns[f'jax_{impl}_fwd_bwd'] = jax_fns(x, w, s, pad, impl, grad_x)
    if torch is not None:
      for cl, tag in [(False, 'nchw'), (True, 'channels_last')]:
        fns[f'torch_{tag}_fwd'], fns[f'torch_{tag}_fwd_bwd'] = torch_fns(xn, wn, s, pad, cl, grad_x, device)
    t0 = time.perf_counter()
    res = Timer(fns, a.budget, a.min_reps, a.max_reps).run()
    form = lambda impl: conv.conv_form(x.shape, w.shape, (s, s), ((pad, pad),) * 2, impl)
    auto = 'xla' if form(auto_impl) == 'xla' else 'matmul'  # the column `auto` runs on this host.
    row = dict(case=name, hw=hw, cin=ci, cout=co, kernel=k, stride=s, batch=a.batch,
               grads='input+kernel' if grad_x else 'kernel', matmul_form=form('matmul'),
               auto_form=form(auto_impl),
               **{k_: (round(v, 2) if k_ != 'reps' else v) for k_, v in res.items()},
               wall_s=round(time.perf_counter() - t0, 2))
    row['speedup'] = round(res['jax_xla_fwd_bwd'] / res['jax_matmul_fwd_bwd'], 2)
    if torch is not None:
      row['ratio'] = round(res[f'jax_{auto}_fwd_bwd'] / res['torch_nchw_fwd_bwd'], 3)
    rows.append(row)
    print(f'# {name}: ' + ' '.join(f'{k_}={v:.2f}' for k_, v in res.items() if k_ != 'reps'),
          file=sys.stderr, flush=True)
  out = dict(
      benchmark='dense_conv', **device_fields(),
      jax=jax.__version__, **torch_fields(device), host_malloc=host_malloc, units='ms (median)',
      ratio_definition='JAX auto (the xla or matmul column, as auto_form says) fwd+bwd / torch NCHW fwd+bwd',
      speedup_definition='JAX xla fwd+bwd / JAX matmul fwd+bwd', cases=rows)
  emit(out, a.out, a.json)


if __name__ == '__main__':
  main()
