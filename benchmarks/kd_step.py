"""Fused KD step throughput: the library's own step vs the same recipe in PyTorch, alternating in one run.

    python benchmarks/kd_step.py --json --out benchmarks/results/kd_step_cpu.json
    python benchmarks/kd_step.py --json --batch 8 --pairs slak_t:resnet50 --reps 3
    python benchmarks/kd_step.py --json --reps 5 --jax-only   # JAX alone in the process
    python benchmarks/kd_step.py --json --torch-teacher-form merged_decom   # same folding both sides
    python benchmarks/kd_step.py --json --batch 64 --reps 10 --peak-tflops 989   # H100 SXM bf16 peak

JAX side: `lkd_jax.step.train_step` as `lkd_jax.train` builds and jits it (train.init_state,
optim.make, train.jit_train_step) for `configs/slak_kd.py:teacher=T,student=S,method=kd` at --batch
and --size: uint8 batch -> normalise -> mixup/cutmix with label smoothing -> frozen teacher (its
inference form and dtype, teacher.freeze) -> student train fwd/bwd -> 0.9 CE + 0.1 KL at T=3 ->
AdamW (cosine schedule) -> EMA 0.9999 and the finite-state check, the state donated.
PyTorch side: the same recipe written here (a blend of the batch with its reverse for mixing, label
smoothing, the teacher under no_grad / autocast, KD loss, AdamW, EMA lerp of the student's floats).
Also timed: the teacher forward alone (eval), giving the teacher's share of the step.
Images/s = batch / median step time; each turn times its second call (benchmarks/timing.py);
`*_minor_faults` counts one more step's page faults. The whole process, PyTorch included, runs with
--host-malloc (default `auto`: `tuned` where JAX runs on CPU, as lkd_jax.main does:
lkd_jax/kernels/host_malloc.py). Several --pairs run each in a fresh process of this script
(--same-process: all in this one): with the tuned malloc a JAX program run after a bigger one was
freed ran up to 21% slower. --pairs are registered lkd_jax models; PyTorch equivalents exist for
slak_t, convnext_t and resnet50 (minimal models written here, no timm/torchvision), other pairs run
their JAX side alone (noted). A SLaK teacher runs in --teacher-form on the JAX side (default
`merged_decom`, configs/slak_kd.py's) and --torch-teacher-form on the PyTorch side (default
`branches`, as the paper's KD code runs it). The teacher computes in --teacher-dtype (default:
bfloat16 on an accelerator, as configs/slak_kd.py runs it, float32 on CPU); the student computes in
--compute-dtype (the same default: bfloat16 under autocast on the PyTorch side). On a GPU PyTorch runs on CUDA with TF32, each call synchronized before the clock reads, and
JAX's memory pool takes 45% of the card (XLA_PYTHON_CLIENT_MEM_FRACTION unless set) to leave
PyTorch room. `gflop_per_image` counts dense FLOPs, 2*teacher + 6*student forward GMACs per image
(lkd_jax.models.macs at --size); with --peak-tflops (an accelerator's dense peak) MFU too.
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from emit import add_output_args, device_fields, emit  # noqa: E402  (benchmarks/emit.py, beside this script)
from configs import slak_kd  # noqa: E402
from lkd_jax import kernels, optim, sharding, train  # noqa: E402
from lkd_jax import step as step_lib  # noqa: E402
from lkd_jax import teacher as teacher_lib  # noqa: E402
from lkd_jax.kernels import depthwise as dw  # noqa: E402
from lkd_jax.models import macs  # noqa: E402
from lkd_jax.models import registry  # noqa: E402
from lkd_jax.models import slak  # noqa: E402
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
def run_config(teacher_name: str, student_name: str, a: argparse.Namespace):
  """configs/slak_kd.py's distillation config for the pair: method kd, the paper's recipe (mixup /
  cutmix, label smoothing, EMA 0.9999), one micro-step per update at --batch, --size pixels."""
  return slak_kd.get_config(
      f'teacher={teacher_name},student={student_name},method=kd,batch={a.batch},eff_batch={a.batch},'
      f'image_size={a.size},teacher_dtype={a.teacher_dtype},teacher_form={a.teacher_form},'
      f'compute_dtype={a.compute_dtype},steps=1000,num_classes={NUM_CLASSES}')


def build_jax(config, chosen: kernels.Kernels, mesh):
  """(step, teacher forward) as lkd_jax.train builds them for `config`: the student and its TrainState
  (train.init_state), the optimizer (optim.make) and train.jit_train_step, i.e. the jitted
  lkd_jax.step.train_step; the teacher frozen in its inference form and dtype (teacher.freeze)."""
  teacher = slak.merge_large_kernels(
      registry.create(config.teacher.name, num_classes=NUM_CLASSES, seed=0, kernels=chosen),
      config.teacher.inference_form)
  t_graph, t_state = sharding.put_replicated(teacher_lib.freeze(teacher, config.teacher.dtype), mesh)
  student = registry.create(config.model.name, num_classes=NUM_CLASSES, seed=1, kernels=chosen,
                            **config.model.kwargs)
  tx, lr_fn = optim.make(config, config.total_steps)
  state, graphs = train.init_state(config, student, None, tx)
  graphs = graphs._replace(teacher=t_graph)
  state = sharding.put_params(state, mesh)
  step = train.jit_train_step(config, graphs, tx, lr_fn, mesh, state, t_state)
  box = {'state': state}

  def run_step(batch):
    box['state'], metrics = step(box['state'], t_state, batch)
    jax.block_until_ready(metrics)

  tfwd = jit(lambda ts, images: step_lib.teacher_forward(
      t_graph, ts, step_lib.normalize(images), jnp.dtype(config.teacher.dtype))[0])
  return run_step, lambda batch: jax.block_until_ready(tfwd(t_state, batch['image']))


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
                teacher_dtype='float32', config=None, compute_dtype='float32'):
  """(step, teacher forward) of the same recipe in PyTorch: mixup (or cutmix's cost-equal blend)
  with label smoothing, teacher forward under no_grad/autocast, KD loss, AdamW, EMA of the student."""
  build = TORCH_MODELS[teacher_name]
  teacher = (build(teacher_form) if teacher_name == 'slak_t' else build()).eval().to(device)
  student = TORCH_MODELS[student_name]().train().to(device)
  if channels_last:
    teacher, student = (m.to(memory_format=torch.channels_last) for m in (teacher, student))
  t_dtype, s_dtype = getattr(torch, teacher_dtype), getattr(torch, compute_dtype)
  opt = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.05)
  ema = [v.detach().clone() for v in student.state_dict().values() if v.is_floating_point()]
  live = [v for v in student.state_dict().values() if v.is_floating_point()]
  smoothing, decay = config.mix.label_smoothing, config.ema_decay

  def run_tfwd(x):
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=t_dtype,
                                         enabled=t_dtype != torch.float32):
      return teacher(x).float()

  def run_step(x, labels):
    lam = 0.7
    x = x.mul(lam).add_(x.flip(0), alpha=1 - lam)
    one_hot = F.one_hot(labels, NUM_CLASSES).float()
    soft = one_hot * (1 - smoothing) + smoothing / NUM_CLASSES
    targets = lam * soft + (1 - lam) * soft.flip(0)
    t_logits = run_tfwd(x)
    with torch.autocast(torch.device(device).type, dtype=s_dtype, enabled=s_dtype != torch.float32):
      s_logits = student(x).float()
    kl = F.kl_div(F.log_softmax(s_logits / T, -1), F.log_softmax(t_logits / T, -1), reduction='batchmean',
                  log_target=True)
    ce = torch.sum(-targets * F.log_softmax(s_logits, -1), -1).mean()
    loss = (1 - ALPHA) * ce + ALPHA * kl * T * T
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, live, 1 - decay)
  return tuple(synced(f, device) for f in (run_step, run_tfwd))


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
  p.add_argument('--compute-dtype', default='auto', choices=['auto', 'float32', 'bfloat16'],
                 help="the student's arithmetic, both sides (auto: as --teacher-dtype)")
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
  a.compute_dtype = train.resolve_compute_dtype(a.compute_dtype, jax.default_backend())
  a.torch_device = torch_device(a.torch_device) if use_torch else None
  chosen = kernels.resolve({'conv_impl': a.conv_impl, 'layer_norm_impl': a.layer_norm_impl},
                           jax.default_backend())  # as train.py resolves a run's config
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
  ln = rng.integers(0, NUM_CLASSES, a.batch)
  mesh = sharding.make_mesh()
  pixels = rng.integers(0, 256, (a.batch, a.size, a.size, 3), dtype=np.uint8)
  batch = sharding.global_batch({'image': pixels, 'label': ln.astype(np.int32)}, mesh)
  xn = ((pixels - np.float32(step_lib.IMAGENET_MEAN)) / np.float32(step_lib.IMAGENET_STD)
        ).astype(np.float32)
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
    config = run_config(tname, sname, a)
    j_step, j_tfwd = build_jax(config, chosen, mesh)
    j_step(batch)
    j_tfwd(batch)
    compile_s = time.perf_counter() - t0
    fns = {'jax_step': lambda: j_step(batch), 'jax_teacher_fwd': lambda: j_tfwd(batch)}
    if pair_torch:
      torch.manual_seed(0)
      t_step, t_tfwd = build_torch(tname, sname, a.torch_layout == 'channels_last',
                                   a.torch_teacher_form, a.torch_device, a.teacher_dtype, config,
                                   a.compute_dtype)
      t_step(xt, lt)
      t_tfwd(xt)
      fns |= {'torch_step': lambda: t_step(xt, lt), 'torch_teacher_fwd': lambda: t_tfwd(xt)}
    res = medians(time_interleaved(fns, a.reps))
    faults = {f'{k}_minor_faults': minor_faults(f) for k, f in fns.items() if k.endswith('_step')}
    gflop_step = round(2 * dense_gmacs(tname, a.size) + 6 * dense_gmacs(sname, a.size), 3)
    row = dict(teacher=tname, student=sname, batch=a.batch, size=a.size, reps=a.reps,
               jax_compile_and_first_step_s=round(compile_s, 1),
               **{f'{k}_s': round(v, 4) for k, v in res.items()},
               jax_images_per_s=round(a.batch / res['jax_step'], 2),
               jax_teacher_share=round(res['jax_teacher_fwd'] / res['jax_step'], 3),
               teacher_depthwise_impls=sorted({
                   dw.pick_auto((a.batch, a.size // 4 >> i, a.size // 4 >> i, 1), shape,
                                chosen.platform)
                   for i, k in enumerate((51, 49, 47, 13)) for shape in ((k, 5, 1), (5, k, 1))})
               if tname == 'slak_t' else None,
               gflop_per_image=gflop_step, **faults)
    if pair_torch:
      row |= dict(torch_images_per_s=round(a.batch / res['torch_step'], 2),
                  torch_teacher_share=round(res['torch_teacher_fwd'] / res['torch_step'], 3),
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
             compute_dtype=a.compute_dtype,
             teacher_form=a.teacher_form,
             torch_teacher_form=a.torch_teacher_form, depthwise_impl=chosen.depthwise,
             conv_impl=chosen.conv, layer_norm_impl=chosen.layer_norm,
             host_malloc=host_malloc,
             jax_step='lkd_jax.step.train_step, built and jitted by lkd_jax.train.jit_train_step '
             'for configs/slak_kd.py (method kd)',
             torch_step='the same recipe written here: blend mixing + label smoothing, teacher '
             'no_grad fwd, KD loss, AdamW, EMA of the student',
             loss='0.9*CE + 0.1*KL(T=3)*T^2', units='seconds per step (median)', notes=notes,
             summary=_summary(rows), cases=rows)
  emit(out, a.out, a.json)


if __name__ == '__main__':
  main()
