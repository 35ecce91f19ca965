"""Registry, output contract, sizes, and the kernels a model is built with; models built abstractly."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lkd_jax import kernels
from lkd_jax.kernels import Kernels
from lkd_jax.models import create, layers, names, slak
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
  size, _ = input_size(model)
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


@pytest.mark.heavy
def test_paper_sizes():
  """Dense parameter counts and GMACs (224x224) of the paper's SLaK models; ResNet-50 as a sanity check."""
  expected = {'slak_t': (50_703_838, 8.70), 'slak_s': (91_131_820, None), 'slak_b': (157_950_792, None),
              'resnet50': (25_557_032, 4.09)}
  for name, (n_params, gmacs) in expected.items():
    model = nnx.eval_shape(lambda: create(name, num_classes=1000))
    assert count_params(model) == n_params, name
    if gmacs:
      assert round(count_macs(name) / 1e9, 2) == gmacs, name


@pytest.mark.parametrize('name', ['slak_atto', 'convnext_atto', 'convnext_bn_atto', 'cswin_atto'])
def test_every_depthwise_conv_computes_in_the_models_form(name):
  """Built with the shift form, every depthwise layer holds it and no grouped convolution is left."""
  chosen = Kernels(depthwise='shift')  # conv 'xla': stems and downsamplers stay convolutions.
  model = abstract(name, kernels=chosen)
  dw = [m for _, m in nnx.iter_modules(model) if isinstance(m, layers.DepthwiseConv)]
  assert dw and all(m.kernels == chosen for m in dw)
  graphdef, state = nnx.split(model)
  jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x, train=False))(
      state, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  groups = conv_groups(jaxpr.jaxpr)
  assert 1 in groups  # stems and downsampling still convolve, but nothing is grouped.
  assert set(groups) == {1}


def test_default_kernels_are_xla_ops():
  model = abstract('slak_atto')
  assert model.kernels == Kernels()
  graphdef, state = nnx.split(model)
  jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x, train=False))(
      state, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  assert any(g > 1 for g in conv_groups(jaxpr.jaxpr))  # XLA's grouped convolution.


def test_two_kernel_choices_in_one_process():
  """A SLaK-T stage-1 block (124 channels, 51x5 + 5x51 + 5x5) built twice with the same weights,
  computing with XLA's depthwise conv and with the shift sums (and with the CPU's `auto` forms):
  same output and input gradient, each program with its own form."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16, 124)), jnp.float32)
  choices = {'xla': Kernels(), 'shift': Kernels(depthwise='shift'),
             'auto': kernels.resolve({}, 'cpu')}
  results, grouped = {}, {}
  for name, chosen in choices.items():
    block = slak.Block(124, 51, 5, True, 0.0, 1.0, kernels=chosen, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(block)
    fn = lambda x: jnp.sum(jnp.sin(nnx.merge(graphdef, state)(x, train=False)))
    results[name] = jax.jit(jax.value_and_grad(fn))(x)
    grouped[name] = any(g > 1 for g in conv_groups(jax.make_jaxpr(fn)(x).jaxpr))
  assert grouped == {'xla': True, 'shift': False, 'auto': False}
  (y, g) = results['xla']
  for name in ('shift', 'auto'):
    assert abs(float(results[name][0] - y)) <= 1e-4 * abs(float(y))
    assert float(jnp.max(jnp.abs(results[name][1] - g))) <= 1e-4 * float(jnp.max(jnp.abs(g)))


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
