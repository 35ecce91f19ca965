"""Registry, output contract, sizes and the single depthwise entry point; all models built abstractly."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from lkd_jax.models import conv, create, layers, names
from lkd_jax.models.__main__ import main as list_main
from lkd_jax.models.macs import _sub_jaxprs, count_macs, count_params, input_size

TINY = [n for n in names() if n.endswith('_atto')]
PAPER = ['slak_t', 'slak_s', 'slak_b', 'convnext_t', 'convnext_s', 'convnext_b', 'convnext_t_bn',
         'convnext_s_bn', 'resnet18', 'resnet34', 'resnet50', 'resnet101', 'swin_t', 'vit_s_legacy',
         'deit_s', 'cswin_t']


def abstract(name: str, **kw) -> nnx.Module:
  return nnx.eval_shape(lambda: create(name, num_classes=10, **kw))


def out_shapes(model: nnx.Module, size: int, train: bool = False):
  graphdef, state = nnx.split(model)
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, train=train), state, x)


def test_registry():
  assert set(PAPER) <= set(names())
  with pytest.raises(ValueError, match='Unknown model .*slak_t'):
    create('no_such_model', num_classes=10)


@pytest.mark.parametrize('name', TINY)
def test_contract(name):
  """(logits, {'stage1'..'stage4'}) with NHWC maps at strides 4/8/16/32 (ViT: the patch grid), train too."""
  model = abstract(name, drop_path_rate=0.1)
  size = input_size(model)
  for train in (False, True):
    logits, feats = out_shapes(model, size, train)
    assert logits.shape == (2, 10)
    assert sorted(feats) == ['stage1', 'stage2', 'stage3', 'stage4']
    for i, f in enumerate(feats.values()):
      side = size // 16 if name.startswith(('vit', 'deit')) else size // 2 ** (i + 2)
      assert f.shape[:3] == (2, side, side), (name, i, f.shape)


@pytest.mark.parametrize('name', ['slak_atto', 'convnext_atto', 'swin_atto', 'deit_atto', 'cswin_atto',
                                  'resnet_atto'])
def test_drop_path_ramp(name):
  rates = [m.rate for _, m in nnx.iter_modules(abstract(name, drop_path_rate=0.2))
           if isinstance(m, layers.DropPath)]
  assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2) and rates == sorted(rates)


def test_paper_sizes():
  """Dense parameter counts and GMACs (224x224) of the paper's SLaK models; ResNet-50 as a sanity check."""
  expected = {'slak_t': (50_703_838, 8.70), 'slak_s': (91_131_820, None), 'slak_b': (157_950_792, None),
              'resnet50': (25_557_032, 4.09)}
  for name, (n_params, gmacs) in expected.items():
    model = nnx.eval_shape(lambda: create(name, num_classes=1000))
    assert count_params(model) == n_params, name
    if gmacs:
      assert round(count_macs(model) / 1e9, 2) == gmacs, name


@pytest.mark.parametrize('name', ['slak_atto', 'convnext_atto', 'convnext_bn_atto', 'cswin_atto'])
def test_depthwise_goes_through_one_function(name, monkeypatch):
  """With the shift implementation selected, no grouped convolution is left in the program."""
  calls = []
  impl = layers.depthwise_conv
  monkeypatch.setattr(layers, 'depthwise_conv', lambda x, k, *a, **kw: calls.append(k.shape) or impl(x, k, *a, **kw))
  model = abstract(name)
  graphdef, state = nnx.split(model)
  previous = layers.get_depthwise_impl(), conv.get_conv_impl()
  layers.set_depthwise_impl('shift')
  conv.set_conv_impl('xla')  # keeps stems and downsamplers convolutions (not CPU einsums).
  try:
    jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x, train=False))(
        state, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  finally:
    layers.set_depthwise_impl(previous[0])
    conv.set_conv_impl(previous[1])
  assert calls
  groups = conv_groups(jaxpr.jaxpr)
  assert 1 in groups  # stems and downsampling still convolve, but nothing is grouped.
  assert set(groups) == {1}


def conv_groups(jaxpr) -> list[int]:
  """feature_group_count of every convolution in a jaxpr, sub-jaxprs included."""
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      out.append(eqn.params['feature_group_count'])
    for sub in _sub_jaxprs(eqn):
      out += conv_groups(sub)
  return out


def test_list_cli(capsys):
  assert list_main(['--list', 'slak_atto', 'deit_atto']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert [ln.split('\t')[0] for ln in lines] == ['slak_atto', 'deit_atto']
  assert all(len(ln.split('\t')) == 3 for ln in lines)
