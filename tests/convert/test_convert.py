"""Converter behaviour without reference files: containers, errors, family renames, CLI round trip."""
from __future__ import annotations

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from lkd_jax.convert import ConversionError, convert_into, load_teacher, unwrap
from lkd_jax.convert.__main__ import main as convert_main
from lkd_jax.convert.families import swin_timm1_to_timm
from lkd_jax.convert.rules import to_torch, torch_key, variables_of
from lkd_jax.convert.teacher import abstract_model


def torch_state_dict(model: nnx.Module, seed: int = 0) -> dict[str, np.ndarray]:
  """Random torch-layout state_dict for `model` (what an official checkpoint would hold)."""
  rng = np.random.default_rng(seed)
  sd = {}
  for path, var in nnx.to_flat_state(variables_of(model)):
    value = rng.uniform(0.5, 1.5, var.get_value().shape).astype(np.float32)
    sd[torch_key(path)] = np.ascontiguousarray(to_torch(path, value))
  return sd


def test_unwrap_containers_and_prefixes():
  a = np.ones(3, np.float32)
  assert unwrap({'model': {'x.weight': a}}) == {'x.weight': a}
  assert set(unwrap({'state_dict_ema': {'module.x.weight': a, 'module.bn.num_batches_tracked': 1},
                     'state_dict': {'y': a}})) == {'x.weight'}
  assert set(unwrap({'model': {'a': a}, 'model_ema': {'b': a}}, key='model_ema')) == {'b'}


def test_errors_list_every_problem():
  model = abstract_model('convnext_atto', 10)
  sd = torch_state_dict(model)
  del sd['stages.0.0.gamma']
  sd['stages.0.0.extra.weight'] = np.zeros(3, np.float32)
  sd['head.weight'] = np.zeros((11, 128), np.float32)
  with pytest.raises(ConversionError) as e:
    convert_into(model, sd)
  msg = str(e.value)
  assert '1 missing' in msg and 'stages.0.0.gamma' in msg
  assert '1 unexpected' in msg and 'stages.0.0.extra.weight' in msg
  assert '1 shape mismatches' in msg and 'head.weight' in msg


def test_swin_official_layout_rename():
  sd = {'layers.0.downsample.reduction.weight': 1, 'layers.0.blocks.0.attn.relative_position_index': 2,
        'layers.1.blocks.1.attn_mask': 3, 'head.weight': 4, 'head.bias': 5, 'norm.weight': 6}
  assert swin_timm1_to_timm(sd) == {'layers.1.downsample.reduction.weight': 1, 'head.fc.weight': 4,
                                    'head.fc.bias': 5, 'norm.weight': 6}
  timm = {'layers.1.downsample.reduction.weight': 1, 'head.fc.weight': 4}
  assert swin_timm1_to_timm(timm) == timm


@pytest.mark.parametrize('fmt', ['npz', 'safetensors'])
def test_cli_round_trip(tmp_path, fmt):
  """npz/safetensors checkpoint -> CLI dir -> load_teacher gives the same variables as a direct load."""
  sd = torch_state_dict(abstract_model('resnet_atto', 10))
  src = tmp_path / f'ckpt.{fmt}'
  prefixed = {f'module.{k}': v for k, v in sd.items()}
  np.savez(src, **prefixed) if fmt == 'npz' else save_file(prefixed, str(src))
  dst = tmp_path / 'converted'
  assert convert_main(['--model', 'resnet_atto', '--num_classes', '10', '--src', str(src),
                       '--dst', str(dst)]) == 0
  direct = load_teacher(str(src), 'resnet_atto', 10)
  again = load_teacher(str(dst), 'resnet_atto', 10)
  for (p, a), (q, b) in zip(nnx.to_flat_state(variables_of(direct)),
                            nnx.to_flat_state(variables_of(again))):
    assert p == q and np.array_equal(a.get_value(), b.get_value())
  np.testing.assert_array_equal(direct.conv1.kernel[...], sd['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(direct.layer1[0].bn1.var[...], sd['layer1.0.bn1.running_var'])
  with pytest.raises(ValueError, match='holds'):
    load_teacher(str(dst), 'resnet50_atto', 10)


def test_cli_refuses_bad_checkpoint(tmp_path, capsys):
  sd = torch_state_dict(abstract_model('resnet_atto', 10))
  sd.pop('fc.bias')
  np.savez(tmp_path / 'bad.npz', **sd)
  assert convert_main(['--model', 'resnet_atto', '--num_classes', '10',
                       '--src', str(tmp_path / 'bad.npz'), '--dst', str(tmp_path / 'out')]) == 1
  assert 'fc.bias' in capsys.readouterr().err
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('form,kernel_shapes', [
    ('merged', {'lkb_reparam': (15, 15, 1, 20)}),
    ('merged_decom', {'LoRA1': (15, 3, 1, 20), 'LoRA2': (3, 15, 1, 20)})])
def test_load_teacher_merged_form(tmp_path, form, kernel_shapes):
  """inference_form='merged' / 'merged_decom': BN-folded kernels + bias per unit, same eval logits
  within 1e-5, and the same variables as the model built in that form."""
  sd = torch_state_dict(abstract_model('slak_atto', 10))
  for k in sd:  # small weights keep the random network's activations tame.
    sd[k] = sd[k] if k.endswith(('running_var', 'bn.weight', 'norm.weight')) else sd[k] * 0.1
  np.savez(tmp_path / 'slak.npz', **sd)
  x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
  branches = load_teacher(str(tmp_path / 'slak.npz'), 'slak_atto', 10)
  merged = load_teacher(str(tmp_path / 'slak.npz'), 'slak_atto', 10, inference_form=form)
  ref, got = branches(x, train=False)[0], merged(x, train=False)[0]
  assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
  built = abstract_model('slak_atto', 10, inference_form=form)
  shapes = lambda m: {p: v.get_value().shape for p, v in nnx.to_flat_state(variables_of(m))}
  assert shapes(built) == shapes(merged)
  unit = merged.stages[0][0].large_kernel
  assert {k: getattr(unit, k).kernel.shape for k in kernel_shapes} == kernel_shapes
  with pytest.raises(ValueError, match='SLaK-family'):
    load_teacher(str(tmp_path / 'slak.npz'), 'resnet_atto', 10, inference_form=form)
  with pytest.raises(ValueError, match='merged_decom'):
    load_teacher(str(tmp_path / 'slak.npz'), 'slak_atto', 10, inference_form='fused')


def test_pth_reader(tmp_path):
  torch = pytest.importorskip('torch')
  sd = torch_state_dict(abstract_model('resnet_atto', 10))
  torch.save({'model': {k: torch.from_numpy(v) for k, v in sd.items()}, 'epoch': 3},
             tmp_path / 'ckpt.pth')
  model = load_teacher(str(tmp_path / 'ckpt.pth'), 'resnet_atto', 10)
  np.testing.assert_array_equal(model.fc.bias[...], sd['fc.bias'])


def test_cli_converts_with_model_kwargs(tmp_path, capsys):
  """A checkpoint of a non-default shape (the released SLaK-T-31's kernels) converts from the CLI."""
  kw = {'kernel_size': (13, 11, 9, 7, 3)}
  sd = torch_state_dict(abstract_model('slak_atto', 10, **kw))
  np.savez(tmp_path / 'slak.npz', **sd)
  dst = tmp_path / 'converted'
  args = ['--model', 'slak_atto', '--num_classes', '10', '--src', str(tmp_path / 'slak.npz'),
          '--dst', str(dst)]
  assert convert_main(args) == 1  # default kernel sizes: shapes do not fit
  assert 'shape' in capsys.readouterr().err
  assert convert_main(args + ['--model_kwargs', '{"kernel_size": [13, 11, 9, 7, 3]}']) == 0
  model = load_teacher(str(dst), 'slak_atto', 10, **kw)
  assert model.stages[0][0].large_kernel.LoRA1.conv.kernel.shape[0] == 13
  with pytest.raises(ValueError, match=r'converted for slak_atto with model kwargs .*13, 11, 9, 7, 3'):
    load_teacher(str(dst), 'slak_atto', 10)


def _official_to_mmcls_4c(w: np.ndarray) -> np.ndarray:
  """The spec's (keys/scalekd README) official -> mmcv Unfold order along the 4C (last) axis."""
  c = w.shape[-1] // 4
  lead = int(np.prod(w.shape[:-1]))
  return w.reshape(lead, 4, c)[:, [0, 2, 1, 3], :].transpose(0, 2, 1).reshape(w.shape)


def _timm_to_mmcls_key(k: str) -> str:
  import re
  k = re.sub(r'^layers\.(\d+)\.downsample\.', lambda m: f'stages.{int(m.group(1)) - 1}.downsample.', k)
  for a, b in (('layers.', 'stages.'), ('.attn.', '.attn.w_msa.'), ('.mlp.fc1.', '.ffn.layers.0.0.'),
               ('.mlp.fc2.', '.ffn.layers.1.'), ('patch_embed.proj.', 'patch_embed.projection.')):
    k = k.replace(a, b)
  k = re.sub(r'^norm\.', 'norm3.', k)
  return 'teacher.' + (k if k.startswith('head.') else 'backbone.' + k)


def test_swin_mmcls_layout_converts_with_the_unfold_channel_order():
  timm = torch_state_dict(abstract_model('swin_atto', 10))
  mmcls = {'student.fc.weight': np.zeros(3, np.float32)}  # a distiller checkpoint: teacher.* only
  for k, v in timm.items():
    if '.downsample.' in k and k.endswith(('norm.weight', 'norm.bias', 'reduction.weight')):
      v = _official_to_mmcls_4c(v)
    mmcls[_timm_to_mmcls_key(k)] = v
  mmcls['teacher.backbone.stages.0.blocks.0.attn.w_msa.relative_position_index'] = np.zeros(
      (49, 49), np.int64)
  got = swin_timm1_to_timm(mmcls)
  assert set(got) == set(timm)
  for k, v in timm.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  red = 'layers.1.downsample.reduction.weight'
  assert not np.array_equal(mmcls['teacher.backbone.stages.0.downsample.reduction.weight'],
                            timm[red])  # the orders differ: a plain rename would be wrong
