"""Parity with the official PyTorch outputs in ../shared/refs (one case per npz; README there)."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from lkd_jax import kernels

from lkd_jax.convert import convert_into, unwrap
from lkd_jax.convert.refs import load_meta, model_from_ref, refs_dir
from lkd_jax.convert.rules import candidates
from lkd_jax.kernels.depthwise import depthwise_conv
from lkd_jax.models.slak import ReparamLargeKernelConv, merge_large_kernels

REFS = refs_dir()
_NPZ = sorted(p.stem for p in REFS.glob('*.npz')) if REFS.is_dir() else []
_ABSENT = pytest.mark.skip(reason=f'reference vectors not found at {REFS} (set LKD_REFS_DIR)')
MODEL_CASES = [n for n in _NPZ if n != 'slak_lk_unit_ref'] or [pytest.param(None, marks=_ABSENT)]
UNIT_CASES = ['slak_lk_unit_ref'] if 'slak_lk_unit_ref' in _NPZ else [pytest.param(None, marks=_ABSENT)]


def _has_train_mode(name: str) -> bool:
  with np.load(REFS / f'{name}.npz') as f:
    return 'logits_train' in f.files


# The forms a run resolves to on this platform ('auto' everywhere), as training computes.
AUTO = kernels.resolve({}, jax.default_backend())

TRAIN_CASES = ([n for n in _NPZ if n != 'slak_lk_unit_ref' and _has_train_mode(n)]
               or [pytest.param(None, marks=_ABSENT)])


def rel_diff(got, ref) -> float:
  """max|got - ref| / max(1, max|ref|), the refs README's rule."""
  ref = np.asarray(ref)
  return float(np.abs(np.asarray(got) - ref).max() / max(1.0, np.abs(ref).max()))


def nhwc(a: np.ndarray) -> np.ndarray:
  return a.transpose(0, 2, 3, 1)


def load(name: str) -> tuple[dict, dict, nnx.Module]:
  """Reference json, npz arrays and the Flax model (built abstractly) holding sd/*."""
  meta = load_meta(name)
  with np.load(REFS / f'{name}.npz') as f:
    data = {k: f[k] for k in f.files}
  model = nnx.eval_shape(lambda: model_from_ref(meta, kernels=AUTO))
  return meta, data, convert_into(model, unwrap(data, prefix='sd/'))


@nnx.jit(static_argnames='train')
def forward(model, x, train):
  return model(x, train=train)


@pytest.mark.parametrize('name', MODEL_CASES)
def test_ref_eval_parity(name):
  meta, data, model = load(name)
  logits, feats = forward(model, nhwc(data['input']), False)
  assert rel_diff(logits, data['logits']) <= 1e-4
  stages = [k for k in data if k.startswith('feat_stage')]
  for k in stages:
    assert rel_diff(feats[f'stage{int(k[-1]) + 1}'], nhwc(data[k])) <= 1e-4, k
  if 'feat_fd' in data:  # FD target: ViT stage4 is already final-normed; Swin/CSWin norm(stage4).
    fd = feats['stage4'] if meta['model_kind'] in ('vit_legacy', 'deit') else model.norm(feats['stage4'])
    assert rel_diff(fd, nhwc(data['feat_fd'])) <= 1e-4
  assert set(feats) == {'stage1', 'stage2', 'stage3', 'stage4'}


@pytest.mark.parametrize('name', TRAIN_CASES)
def test_ref_train_mode_parity(name):
  """Train-mode BatchNorm: batch statistics in the output, torch's running-stat update."""
  _, data, model = load(name)
  logits, _ = forward(model, nhwc(data['input']), True)
  assert rel_diff(logits, data['logits_train']) <= 1e-4
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.BatchStat)))
  after = {k[len('bn_after_train/'):]: v for k, v in data.items() if k.startswith('bn_after_train/')}
  assert after and len(after) == len(flat)
  for key, ref in after.items():
    path = next(p for p in candidates(key) if p in flat)
    assert rel_diff(flat[path].get_value(), ref) <= 1e-4, key


@pytest.mark.parametrize('name', UNIT_CASES)
def test_ref_slak_large_kernel_unit(name):
  """Every tap of every SLaK kernel size, eval + train, and the merged inference kernel."""
  meta = load_meta(name)
  with np.load(REFS / f'{name}.npz') as f:
    data = {k: f[k] for k in f.files}
  x = nhwc(data['input'])
  for case, spec in meta['cases'].items():
    def build():
      return ReparamLargeKernelConv(meta['channels'], spec['kernel_size'], spec['small_kernel'],
                                    spec['Decom'], kernels=AUTO, rngs=nnx.Rngs(0))
    unit = convert_into(nnx.eval_shape(build), unwrap(data, prefix=f'{case}/sd/'))
    out = unit(x, train=False)
    assert rel_diff(out, nhwc(data[f'{case}/out'])) <= 1e-4, case
    (kernel,), bias = unit.merged_kernels(decom=False)
    assert kernel.shape[:2] == (spec['kernel_size'],) * 2
    assert rel_diff(depthwise_conv(x, kernel, AUTO) + bias, out) <= 1e-5, case
    merged, bias = unit.merged_kernels(decom=True)
    k, n = spec['kernel_size'], spec['small_kernel']
    want = [(k, n), (n, k)] if spec['Decom'] and n < k else [(k, k)]
    assert [t.shape[:2] for t in merged] == want, case
    assert rel_diff(sum(depthwise_conv(x, t, AUTO) for t in merged) + bias, out) <= 1e-5, case
    assert rel_diff(unit(x, train=True), nhwc(data[f'{case}/out_train'])) <= 1e-4, case


@pytest.mark.parametrize('name', [n for n in MODEL_CASES if n in ('slak_tiny_ref', 'convnext_bn_ref')]
                         or [pytest.param(None, marks=_ABSENT)])
@pytest.mark.parametrize('form', ['merged', 'merged_decom'])
def test_ref_merged_inference_form(name, form):
  """merge_large_kernels keeps the eval logits of the reference weights (within 1e-5)."""
  _, data, model = load(name)
  x = nhwc(data['input'])
  logits, _ = forward(model, x, False)
  merged_logits, _ = forward(merge_large_kernels(model, form), x, False)
  assert rel_diff(merged_logits, logits) <= 1e-5
  assert rel_diff(merged_logits, data['logits']) <= 1e-4
