"""Fused KD step throughput, JAX vs an equivalent PyTorch step, same batch, alternating in one run.

    python benchmarks/kd_step.py --json --out benchmarks/results/kd_step_cpu.json
    python benchmarks/kd_step.py --json --batch 8 --pairs slak_t:resnet50 --reps 3
    python benchmarks/kd_step.py --json --reps 5 --jax-only   # JAX alone in the process
    python benchmarks/kd_step.py --json --torch-teacher-form merged_decom   # same folding both sides
    python benchmarks/kd_step.py --json --batch 64 --reps 10 --peak-tflops 989   # H100 SXM bf16 peak

Step = teacher forward in eval mode without gradients (jax.lax.stop_gradient / torch.no_grad) +
student forward/backward in train mode (BatchNorm batch statistics) + vanilla KD loss
(0.9 CE + 0.1 KL at T=3, as the paper's code) + AdamW update; one `jax.jit` on the JAX side (the
student state donated). Also timed: the teacher forward alone (eval), to give the teacher's share of
the step, the student's part alone (the same step fed teacher logits computed beforehand:
`*_step_minus_parts_s` = step - teacher forward - student step, the cost or saving of fusing them),
and SLaK-T forward / ConvNeXt-T forward. Images/s = batch / median step time; each turn
times its second call (benchmarks/timing.py); `*_minor_faults` counts one more step's page faults.
The whole process, PyTorch included, runs with --host-malloc (default `auto`: `tuned` where JAX
runs on CPU, as lkd_jax.main does: lkd_jax/kernels/host_malloc.py; `system` keeps glibc's defaults).
Several --pairs run each in a fresh process of this script (--same-process: all in this one): with
the tuned malloc, a JAX program run after a bigger one was freed ran up to 21% slower
(benchmarks/README.md, Fused KD step). --pairs are registered lkd_jax models; PyTorch equivalents
exist for slak_t, convnext_t and resnet50, other pairs run their JAX side alone (noted).
The PyTorch models are minimal equivalents written here (no timm/torchvision): SLaK-T (width 1.3,
decomposed Kx5 + 5xK + 5x5 depthwise branches with BN), ConvNeXt-T (official: 7x7 dw with bias),
ResNet-50 (torchvision v1.5). torch is optional; without it only the JAX side runs.
A SLaK teacher runs in --teacher-form on the JAX side (default `merged_decom`, configs/slak_kd.py's
default: BN and the 5x5 branch folded into the Kx5 / 5xK kernels, lkd_jax/models/slak.py) and in
--torch-teacher-form on the PyTorch side (default `branches`: the three conv+BN branches, as the
paper's KD code runs its teacher; `merged_decom` / `merged` give it the same folded convs).
The teacher computes in --teacher-dtype (default: bfloat16 where JAX runs on an accelerator, as
configs/slak_kd.py runs it, float32 on CPU) through lkd_jax.step.teacher_forward, and PyTorch's
teacher under autocast to the same dtype; the students train in float32. On a GPU PyTorch runs on
CUDA with TF32 matmuls and convolutions (JAX's default precision for float32 there), each of its
calls synchronized before the clock reads, and JAX's memory pool takes 45% of the card instead of 75%
(XLA_PYTHON_CLIENT_MEM_FRACTION, unless either spelling is set) to leave PyTorch room.
`gflop_per_image` counts dense FLOPs, KD step = 2*teacher + 6*student forward GMACs per image, each
model's counted at --size by lkd_jax.models.macs as `python -m lkd_jax.models --list` does (at 224:
SLaK-T 8.70, ConvNeXt-T 4.46, ResNet-50 4.09); with --peak-tflops (an accelerator's dense peak) MFU too.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from emit import add_output_args, device_fields, emit  # noqa: E402  (benchmarks/emit.py, beside this script)
from lkd_jax import kernels  # noqa: E402
from lkd_jax.kernels import depthwise as dw  # noqa: E402
from lkd_jax.models import macs  # noqa: E402
from lkd_jax.models import registry  # noqa: E402
from lkd_jax.models import slak  # noqa: E402
from lkd_jax.step import cast_floats, teacher_forward  # noqa: E402
from timing import add_host_malloc_arg, apply_host_malloc, jit, medians, time_interleaved  # noqa: E402
from torch_side import (add_torch_device_arg, leave_gpu_memory_for_torch, synced, torch,  # noqa: E402
                        torch_device, torch_fields, use_all_cores)

if torch is not None:
  from torch import nn
  import torch.nn.functional as F

NUM_CLASSES = 1000
T, ALPHA = 3.0, 0.1


def dense_gmacs(name: str, size: int) -> float:
  """Dense forward GMACs per image of registered model `name` at size^2 (built abstractly)."""
  return macs.count_macs(name, size, num_classes=NUM_CLASSES) / 1e9


# ----------------------------------------------------------------------------------------- JAX
def kd_loss_jax(s_logits, t_logits, labels):
  ce = optax.softmax_cross_entropy_with_integer_labels(s_logits, labels).mean()
  kl = jnp.sum(jax.nn.softmax(t_logits / T) * (jax.nn.log_softmax(t_logits / T)
                                               - jax.nn.log_softmax(s_logits / T)), -1).mean()
  return (1 - ALPHA) * ce + ALPHA * kl * T * T


def build_jax(teacher_name, student_name, teacher_form='branches', teacher_dtype='float32',
              chosen=kernels.Kernels()):
  teacher = slak.merge_large_kernels(
      registry.create(teacher_name, num_classes=NUM_CLASSES, seed=0, kernels=chosen), teacher_form)
  student = registry.create(student_name, num_classes=NUM_CLASSES, seed=1, kernels=chosen)
  t_graph, t_state = nnx.split(teacher)
  t_state = cast_floats(t_state, jnp.dtype(teacher_dtype))
  s_graph, s_params, s_stats, s_rest = nnx.split(student, nnx.Param, nnx.BatchStat, ...)
  tx = optax.adamw(1e-3, weight_decay=0.05)
  opt_state = tx.init(s_params)

  def teacher_fwd(t_state, x):
    return teacher_forward(t_graph, t_state, x, jnp.dtype(teacher_dtype))[0]

  def student_update(s_params, s_stats, opt_state, t_logits, x, labels):
    def loss_fn(params):
      model = nnx.merge(s_graph, params, s_stats, s_rest, copy=True)
      logits, _ = model(x, train=True)
      return kd_loss_jax(logits, t_logits, labels), nnx.state(model, nnx.BatchStat)
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(s_params)
    updates, opt_state = tx.update(grads, opt_state, s_params)
    return optax.apply_updates(s_params, updates), new_stats, opt_state, loss

  def step(s_params, s_stats, opt_state, t_state, x, labels):
    return student_update(s_params, s_stats, opt_state, teacher_fwd(t_state, x), x, labels)

  step_j = jit(step, donate_argnums=(0, 1, 2))
  student_j = jit(student_update, donate_argnums=(0, 1, 2))
  tfwd_j = jit(teacher_fwd)
  state = {'s': (s_params, s_stats, opt_state)}

  def update(fn, *args):
    p, s, o = state['s']
    p, s, o, loss = fn(p, s, o, *args)
    state['s'] = (p, s, o)
    jax.block_until_ready(loss)

  def run_tfwd(x):
    return jax.block_until_ready(tfwd_j(t_state, x))
  return (lambda x, labels: update(step_j, t_state, x, labels), run_tfwd,
          lambda t_logits, x, labels: update(student_j, t_logits, x, labels))


# ------------------------------------------------------------------------------------- PyTorch
if torch is not None:
  class LayerNorm2d(nn.Module):  # channels-first LN over C (ConvNeXt's "channels_first" LN).
    def __init__(self, c, eps=1e-6):
      super().__init__()
      self.ln = nn.LayerNorm(c, eps=eps)

    def forward(self, x):
      return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

  class ConvBN(nn.Module):
    def __init__(self, c, k):
      super().__init__()
      self.conv = nn.Conv2d(c, c, k, padding=(k[0] // 2, k[1] // 2), groups=c, bias=False)
      self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
      return self.bn(self.conv(x))

  def dw_conv(c, kh, kw, bias):
    return nn.Conv2d(c, c, (kh, kw), padding=(kh // 2, kw // 2), groups=c, bias=bias)

  class Block(nn.Module):
    def __init__(self, c, k, small, slak, form='branches'):
      super().__init__()
      if slak and form == 'merged_decom':  # folded as lkd_jax's MergedDecomposedKernel.
        self.lk = nn.ModuleList([dw_conv(c, k, small, True), dw_conv(c, small, k, False)])
      elif slak and form == 'merged':
        self.lk = nn.ModuleList([dw_conv(c, k, k, True)])
      elif slak:
        self.lk = nn.ModuleList([ConvBN(c, (k, small)), ConvBN(c, (small, k)), ConvBN(c, (small, small))])
      else:
        self.lk = nn.ModuleList([nn.Conv2d(c, c, 7, padding=3, groups=c)])
      self.norm = nn.LayerNorm(c, eps=1e-6)
      self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
      self.gamma = nn.Parameter(1e-6 * torch.ones(c))

    def forward(self, x):
      y = sum(b(x) for b in self.lk).permute(0, 2, 3, 1)
      y = self.pw2(F.gelu(self.pw1(self.norm(y)))) * self.gamma
      return x + y.permute(0, 3, 1, 2)

  class ConvNeXtLike(nn.Module):
    """SLaK-T (slak=True, width 1.3, kernels 51/49/47/13 x 5) or ConvNeXt-T (7x7 dw with bias)."""

    def __init__(self, slak: bool, form: str = 'branches'):
      super().__init__()
      dims = [int(d * (1.3 if slak else 1.0)) for d in (96, 192, 384, 768)]
      ks = (51, 49, 47, 13) if slak else (7,) * 4
      self.down = nn.ModuleList([nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0]))] + [
          nn.Sequential(LayerNorm2d(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, 2)) for i in range(3)])
      self.stages = nn.ModuleList([nn.Sequential(*[Block(dims[i], ks[i], 5, slak, form) for _ in range(d)])
                                   for i, d in enumerate((3, 3, 9, 3))])
      self.norm, self.head = nn.LayerNorm(dims[-1], eps=1e-6), nn.Linear(dims[-1], NUM_CLASSES)

    def forward(self, x):
      for d, s in zip(self.down, self.stages):
        x = s(d(x))
      return self.head(self.norm(x.mean((2, 3))))

  class Bottleneck(nn.Module):
    def __init__(self, cin, w, stride):
      super().__init__()
      self.c1, self.b1 = nn.Conv2d(cin, w, 1, bias=False), nn.BatchNorm2d(w)
      self.c2, self.b2 = nn.Conv2d(w, w, 3, stride, 1, bias=False), nn.BatchNorm2d(w)
      self.c3, self.b3 = nn.Conv2d(w, 4 * w, 1, bias=False), nn.BatchNorm2d(4 * w)
      self.down = None if (stride == 1 and cin == 4 * w) else nn.Sequential(
          nn.Conv2d(cin, 4 * w, 1, stride, bias=False), nn.BatchNorm2d(4 * w))

    def forward(self, x):
      y = F.relu(self.b1(self.c1(x)))
      y = F.relu(self.b2(self.c2(y)))
      y = self.b3(self.c3(y))
      return F.relu(y + (x if self.down is None else self.down(x)))

  class ResNet50(nn.Module):
    def __init__(self):
      super().__init__()
      self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                nn.MaxPool2d(3, 2, 1))
      blocks, cin = [], 64
      for i, (n, w) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for j in range(n):
          blocks.append(Bottleneck(cin, w, 2 if (i > 0 and j == 0) else 1))
          cin = 4 * w
      self.blocks, self.fc = nn.Sequential(*blocks), nn.Linear(cin, NUM_CLASSES)

    def forward(self, x):
      return self.fc(self.blocks(self.stem(x)).mean((2, 3)))

  TORCH_MODELS = {'slak_t': lambda form='branches': ConvNeXtLike(True, form), 'convnext_t': lambda: ConvNeXtLike(False),
                  'convnext_t_bn': lambda: ConvNeXtLike(False), 'resnet50': ResNet50}

  def no_torch_model_note(what: str) -> str:
    """A result note: `what` runs its JAX side alone, TORCH_MODELS lacking an equivalent."""
    return (f'torch side skipped for {what}: no PyTorch equivalent in benchmarks/kd_step.py '
            f'(it has {", ".join(TORCH_MODELS)})')


def build_torch(teacher_name, student_name, channels_last, teacher_form='branches', device='cpu',
                teacher_dtype='float32'):
  build = TORCH_MODELS[teacher_name]
  teacher = (build(teacher_form) if teacher_name == 'slak_t' else build()).eval().to(device)
  student = TORCH_MODELS[student_name]().train().to(device)
  if channels_last:
    teacher, student = (m.to(memory_format=torch.channels_last) for m in (teacher, student))
  t_dtype = getattr(torch, teacher_dtype)
  opt = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.05)

  def run_student(t_logits, x, labels):
    s_logits = student(x)
    kl = F.kl_div(F.log_softmax(s_logits / T, -1), F.log_softmax(t_logits / T, -1), reduction='batchmean',
                  log_target=True)
    loss = (1 - ALPHA) * F.cross_entropy(s_logits, labels) + ALPHA * kl * T * T
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  def run_tfwd(x):
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=t_dtype,
                                         enabled=t_dtype != torch.float32):
      return teacher(x).float()
  return tuple(synced(f, device) for f in (
      lambda x, labels: run_student(run_tfwd(x), x, labels), run_tfwd, run_student))


# ---------------------------------------------------------------------------------------- main
def minor_faults(fn) -> int:
  """Page faults (minor: fresh pages mapped in) taken by the process during one call of `fn`."""
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  fn()
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add_output_args(p)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--size', type=int, default=224)
  p.add_argument('--reps', type=int, default=3)
  p.add_argument('--pairs', default='slak_t:resnet50,convnext_t:resnet50')
  p.add_argument('--torch-layout', default='nchw', choices=['nchw', 'channels_last'])
  p.add_argument('--conv-impl', default='auto', choices=('auto',) + kernels.CONV_FORMS,
                 help='dense convs')
  p.add_argument('--layer-norm-impl', default='auto', choices=('auto',) + kernels.LAYER_NORM_FORMS,
                 help='LayerNorm statistics')
  p.add_argument('--peak-tflops', type=float, default=None, help='dense peak for MFU (accelerators)')
  p.add_argument('--jax-only', action='store_true', help='skip the PyTorch side even if torch is installed')
  add_torch_device_arg(p)
  p.add_argument('--teacher-dtype', default='auto', choices=['auto', 'float32', 'bfloat16'],
                 help='the teacher forward, both sides (auto: bfloat16 on accelerators, else float32)')
  p.add_argument('--teacher-form', default='merged_decom', choices=slak.INFERENCE_FORMS,
                 help="a SLaK teacher's inference form, JAX side")
  p.add_argument('--torch-teacher-form', default='branches', choices=slak.INFERENCE_FORMS,
                 help="a SLaK teacher's form, PyTorch side (branches: as the paper's code)")
  p.add_argument('--same-process', action='store_true',
                 help='time every pair in this process (default: each of several pairs in its own)')
  add_host_malloc_arg(p)
  argv = sys.argv[1:] if argv is None else argv
  a = p.parse_args(argv)
  pairs = a.pairs.split(',')
  known = set(registry.names())
  for pair in pairs:
    bad = [m for m in pair.split(':') if m not in known]
    if pair.count(':') != 1 or bad:
      hint = f' (unknown: {", ".join(bad)}; `python -m lkd_jax.models --list` lists them)' if bad else ''
      p.error(f'--pairs takes teacher:student pairs of registered models, got {pair!r}{hint}')
  if len(pairs) > 1 and not a.same_process:
    # Before anything starts a JAX backend here: on a GPU this process would hold its memory pool
    # while the children run.
    emit(_result_of_own_processes(argv, pairs), a.out, a.json)
    return
  use_torch = torch is not None and not a.jax_only
  if use_torch:
    leave_gpu_memory_for_torch(a.torch_device)
  host_malloc = apply_host_malloc(a.host_malloc)
  if a.teacher_dtype == 'auto':
    a.teacher_dtype = 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'
  a.torch_device = torch_device(a.torch_device) if use_torch else None
  chosen = kernels.resolve({'conv_impl': a.conv_impl, 'layer_norm_impl': a.layer_norm_impl},
                           jax.default_backend())
  rows, notes = _time_pairs(a, pairs, use_torch, chosen)
  _emit_result(a, rows, notes, host_malloc, chosen)


def _result_of_own_processes(argv: list[str], pairs: list[str]) -> dict:
  """The result of this script run once per pair, each in a fresh process (the later --pairs / --out
  given to it win over those in `argv`): the first run's fields, every run's cases and notes."""
  rows, notes = [], []
  with tempfile.TemporaryDirectory() as tmp:
    for i, pair in enumerate(pairs):
      out = os.path.join(tmp, f'{i}.json')
      subprocess.run([sys.executable, os.path.abspath(__file__), *argv, '--pairs', pair,
                      '--same-process', '--out', out], check=True, stdout=subprocess.DEVNULL)
      with open(out) as f:
        result = json.load(f)
      if i == 0:
        first = result
      rows += result['cases']
      notes += [n for n in result['notes'] if n not in notes]
  return dict(first, pairs_in='a process each', notes=notes, summary=_summary(rows), cases=rows)


def _time_pairs(a: argparse.Namespace, pairs: list[str], use_torch: bool, chosen: kernels.Kernels
                ) -> tuple[list[dict], list[str]]:
  """One result row per teacher:student pair, both models computing with `chosen`, all timed in
  this process; and notes."""
  use_all_cores()
  rng = np.random.default_rng(0)
  xn = rng.standard_normal((a.batch, a.size, a.size, 3), dtype=np.float32)
  ln = rng.integers(0, NUM_CLASSES, a.batch)
  x, labels = jnp.asarray(xn), jnp.asarray(ln)
  if use_torch:
    xt = torch.from_numpy(np.ascontiguousarray(xn.transpose(0, 3, 1, 2))).to(a.torch_device)
    if a.torch_layout == 'channels_last':
      xt = xt.contiguous(memory_format=torch.channels_last)
    lt = torch.from_numpy(ln).to(a.torch_device)
  rows, notes = [], []
  for pair in pairs:
    tname, sname = pair.split(':')
    pair_torch = use_torch and tname in TORCH_MODELS and sname in TORCH_MODELS
    if use_torch and not pair_torch:
      notes.append(no_torch_model_note(pair))
    t0 = time.perf_counter()
    j_step, j_tfwd, j_student = build_jax(tname, sname, a.teacher_form, a.teacher_dtype, chosen)
    j_step(x, labels)
    j_logits = j_tfwd(x)
    compile_s = time.perf_counter() - t0
    fns = {'jax_step': lambda: j_step(x, labels), 'jax_teacher_fwd': lambda: j_tfwd(x),
           'jax_student_step': lambda: j_student(j_logits, x, labels)}
    if pair_torch:
      torch.manual_seed(0)
      t_step, t_tfwd, t_student = build_torch(tname, sname, a.torch_layout == 'channels_last',
                                              a.torch_teacher_form, a.torch_device, a.teacher_dtype)
      t_step(xt, lt)
      t_logits = t_tfwd(xt)
      fns |= {'torch_step': lambda: t_step(xt, lt), 'torch_teacher_fwd': lambda: t_tfwd(xt),
              'torch_student_step': lambda: t_student(t_logits, xt, lt)}
    res = medians(time_interleaved(fns, a.reps))
    faults = {f'{k}_minor_faults': minor_faults(f) for k, f in fns.items() if k.endswith('_step')}
    gflop_step = round(2 * dense_gmacs(tname, a.size) + 6 * dense_gmacs(sname, a.size), 3)
    row = dict(teacher=tname, student=sname, batch=a.batch, size=a.size, reps=a.reps,
               jax_compile_and_first_step_s=round(compile_s, 1),
               **{f'{k}_s': round(v, 4) for k, v in res.items()},
               jax_images_per_s=round(a.batch / res['jax_step'], 2),
               jax_teacher_share=round(res['jax_teacher_fwd'] / res['jax_step'], 3),
               jax_step_minus_parts_s=round(res['jax_step'] - res['jax_teacher_fwd']
                                            - res['jax_student_step'], 4),
               teacher_depthwise_impls=sorted({
                   dw.pick_auto((a.batch, a.size // 4 >> i, a.size // 4 >> i, 1), shape,
                                chosen.platform)
                   for i, k in enumerate((51, 49, 47, 13)) for shape in ((k, 5, 1), (5, k, 1))})
               if tname == 'slak_t' else None,
               gflop_per_image=gflop_step, **faults)
    if pair_torch:
      row |= dict(torch_images_per_s=round(a.batch / res['torch_step'], 2),
                  torch_teacher_share=round(res['torch_teacher_fwd'] / res['torch_step'], 3),
                  torch_step_minus_parts_s=round(res['torch_step'] - res['torch_teacher_fwd']
                                                 - res['torch_student_step'], 4),
                  ratio=round(res['jax_step'] / res['torch_step'], 3),
                  teacher_fwd_ratio=round(res['jax_teacher_fwd'] / res['torch_teacher_fwd'], 3))
    if a.peak_tflops:
      row['jax_mfu'] = round(row['jax_images_per_s'] * gflop_step / (a.peak_tflops * 1e3), 4)
    rows.append(row)
    print('#', json.dumps(row), file=sys.stderr, flush=True)
  return rows, notes


def _summary(rows: list[dict]) -> dict[str, float]:
  """SLaK-T forward / ConvNeXt-T forward on each side, where both teachers were timed."""
  summary = {}
  for side in ('jax', 'torch'):
    fw = {r['teacher']: r[f'{side}_teacher_fwd_s'] for r in rows if f'{side}_teacher_fwd_s' in r}
    cnx = fw.get('convnext_t', fw.get('convnext_t_bn'))
    if 'slak_t' in fw and cnx:
      summary[f'{side}_slak_t_fwd_over_convnext_t_fwd'] = round(fw['slak_t'] / cnx, 3)
  return summary


def _emit_result(a: argparse.Namespace, rows: list[dict], notes: list[str], host_malloc: str,
                 chosen: kernels.Kernels) -> None:
  """The result JSON of `rows` timed in this process, as --out / --json ask."""
  out = dict(benchmark='kd_step', **device_fields(),
             jax=jax.__version__,
             **torch_fields(a.torch_device, 'torch side skipped: --jax-only' if a.jax_only else None),
             pairs_in='this process',
             torch_layout=a.torch_layout, teacher_dtype=a.teacher_dtype,
             teacher_form=a.teacher_form,
             torch_teacher_form=a.torch_teacher_form, depthwise_impl=chosen.depthwise,
             conv_impl=chosen.conv, layer_norm_impl=chosen.layer_norm,
             host_malloc=host_malloc,
             jax_step_note='equivalent fused step built in this script (teacher eval fwd under '
             'stop_gradient + student train fwd/bwd + KD loss + AdamW, one jax.jit, student donated)',
             loss='0.9*CE + 0.1*KL(T=3)*T^2', units='seconds per step (median)', notes=notes,
             summary=_summary(rows), cases=rows)
  emit(out, a.out, a.json)


if __name__ == '__main__':
  main()
