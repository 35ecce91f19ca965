"""The matmul forms of dense convs give XLA's convolution output and gradients (tiny shapes)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lkd_jax import kernels
from lkd_jax.kernels import Kernels
from lkd_jax.kernels import conv
from lkd_jax.models import layers, registry

HI = jax.lax.Precision.HIGHEST
# (x shape, (kh, kw, cout), stride, padding, form the matmul impl takes)
CASES = [((2, 6, 5, 3), (1, 1, 4), 1, 0, 'pointwise'),
         ((1, 7, 6, 3), (1, 1, 4), 2, 0, 'pointwise'),  # odd map: ceil(7/2) rows, as VALID
         ((2, 8, 8, 3), (4, 4, 5), 4, 0, 'patchify'),
         ((1, 9, 7, 2), (2, 2, 3), 2, 0, 'patchify'),  # remainder row/column dropped, as VALID
         ((1, 6, 6, 2), (3, 3, 3), 1, 1, 'im2col_grad'),
         ((2, 7, 6, 2), (3, 3, 3), 2, 1, 'im2col_grad'),
         ((1, 6, 5, 2), (1, 1, 3), 1, 1, 'im2col_grad'),  # padded 1x1
         ((1, 9, 8, 2), (7, 7, 3), 2, 3, 'im2col_grad'),  # ResNet stem
         ((1, 8, 8, 2), (3, 5, 3), 1, 0, 'im2col_grad')]


def _data(xs, ks, seed=0):
  r = np.random.default_rng(seed)
  return (jnp.asarray(r.standard_normal(xs), jnp.float32),
          jnp.asarray(r.standard_normal(ks[:2] + (xs[-1], ks[2])), jnp.float32))


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-12))


def _out_and_grads(f, x, w):
  loss = lambda x, w: jnp.sum(jnp.sin(f(x, w)) * jnp.arange(f(x, w).shape[2], dtype=x.dtype)[:, None])
  return jax.jit(lambda x, w: (f(x, w), jax.grad(loss, (0, 1))(x, w)))(x, w)


@pytest.mark.parametrize('xs,ks,stride,pad,form', CASES)
def test_matmul_forms_match_xla_conv(xs, ks, stride, pad, form):
  x, w = _data(xs, ks)
  pads = ((pad, pad), (pad, pad))
  assert conv.conv_form(xs, w.shape, (stride, stride), pads, 'matmul') == form
  assert conv.conv_form(xs, w.shape, (stride, stride), pads, 'xla') == 'xla'

  def run(impl):
    return _out_and_grads(lambda x, w: conv.conv_general_dilated(
        x, w, (stride, stride), pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=HI,
        impl=impl), x, w)
  (y, (gx, gw)), (ry, (rx, rw)) = run('matmul'), run('xla')
  assert y.shape == ry.shape
  assert _rel(y, ry) <= 1e-5 and _rel(gx, rx) <= 1e-5 and _rel(gw, rw) <= 1e-5


def test_auto_is_matmul_on_cpu_only_and_unknown_names_are_refused():
  assert kernels.resolve({}, 'cpu', isa='avx2').conv == 'matmul'
  assert kernels.resolve({}, 'gpu').conv == kernels.resolve({}, 'tpu').conv == 'xla'
  assert kernels.resolve({'conv_impl': 'xla'}, 'cpu', isa='avx2').conv == 'xla'
  with pytest.raises(ValueError, match='Unknown conv impl'):
    kernels.resolve({'conv_impl': 'nope'}, 'cpu')


@pytest.mark.parametrize('isa,kxk', [('avx512f', 'xla'), ('avx2', 'im2col_grad')])
def test_auto_leaves_kxk_convs_to_xla_on_avx512_hosts_only(isa, kxk):
  impl = kernels.resolve({}, 'cpu', isa=isa).conv
  forms = {ks: conv.conv_form(xs, ks[:2] + (xs[-1], ks[2]), (s, s), ((p, p), (p, p)), impl)
           for xs, ks, s, p, _ in CASES}
  assert forms[(1, 1, 4)] == 'pointwise' and forms[(4, 4, 5)] == 'patchify'
  assert forms[(3, 3, 3)] == forms[(7, 7, 3)] == kxk
  assert conv.conv_form((1, 6, 6, 2), (3, 3, 2, 3), (1, 1), ((1, 1), (1, 1)), 'matmul') == 'im2col_grad'


def test_grouped_dilated_and_string_padding_fall_back_to_xla():
  x, w = _data((1, 6, 6, 4), (1, 1, 4))
  ref = jax.lax.conv_general_dilated(x, w[:, :, :2], (1, 1), 'VALID',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     feature_group_count=2)
  y = conv.conv_general_dilated(x, w[:, :, :2], (1, 1), 'VALID',
                                dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=2)
  assert _rel(y, ref) == 0.0
  y = conv.conv_general_dilated(x, w, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  assert y.shape == (1, 6, 6, 4)


def test_model_forward_and_grads_same_under_both_impls():
  """ResNet-50's stem, 1x1 and strided 1x1 convs all go through layers.conv."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
  for name in ('resnet50_atto',):
    results = []
    for impl in ('xla', 'matmul'):
      model = registry.create(name, num_classes=5, seed=0, kernels=Kernels(conv=impl))
      graph, params, rest = nnx.split(model, nnx.Param, ...)

      def loss(p):
        logits, _ = nnx.merge(graph, p, rest, copy=True)(x, train=False)
        return jnp.sum(jnp.sin(logits)), logits
      results.append(jax.jit(jax.grad(loss, has_aux=True))(params))
    (g0, y0), (g1, y1) = results
    assert _rel(y1, y0) <= 1e-4
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
      assert _rel(a, b) <= 1e-3



def test_every_dense_conv_of_the_zoo_computes_in_the_models_form():
  chosen = Kernels(conv='matmul')
  for name in ('convnext_atto', 'slak_atto', 'swin_atto', 'cswin_atto', 'resnet_atto'):
    model = nnx.eval_shape(lambda: registry.create(name, num_classes=5, seed=0, kernels=chosen))
    convs = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Conv)]
    assert convs and all(m.conv_general_dilated == conv.ConvGeneralDilated('matmul')
                         for m in convs), name
  assert (layers.conv(3, 4, 1, kernels=Kernels(), rngs=nnx.Rngs(0)).conv_general_dilated
          == conv.ConvGeneralDilated('xla'))
