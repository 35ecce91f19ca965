"""Every depthwise form gives the grouped conv's output and gradients (tiny shapes)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lkd_jax.kernels import DEPTHWISE_FORMS, DepthwiseOptions, Kernels
from lkd_jax.kernels import depthwise as dw

# Single forms, and the forward/backward pairs `auto` picks.
IMPLS = list(DEPTHWISE_FORMS) + ['shift_cb/toeplitz', 'shift_cb/fft']
# (x shape, kernel hw): square/rectangular, kernels longer than 2H-1 (cropped), 1-wide, 1x1; batch-2
# 7x7 and 5x11 have >= 49 taps (the FFT kernel gradient on maps larger than these).
CASES = [((1, 12, 10, 3), (5, 5)), ((2, 8, 7, 3), (7, 3)), ((1, 8, 7, 2), (3, 9)),
         ((2, 9, 6, 3), (7, 7)), ((2, 10, 9, 2), (5, 11)),
         ((1, 4, 3, 2), (11, 3)), ((1, 3, 4, 2), (3, 11)), ((1, 4, 4, 2), (13, 13)),
         ((1, 5, 4, 2), (5, 1)), ((1, 3, 5, 2), (1, 1)),
         ((1, 9, 8, 2), (13, 13)), ((2, 10, 9, 2), (11, 5))]  # > 49 taps: shift sums in chunks.


def _ref(x, k):
  kh, kw, c = k.shape
  return jax.lax.conv_general_dilated(
      x, k[:, :, None, :], (1, 1), ((kh // 2, kh // 2), (kw // 2, kw // 2)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c)


def _data(shape, kshape, seed=0):
  r = np.random.default_rng(seed)
  return (jnp.asarray(r.standard_normal(shape), jnp.float32),
          jnp.asarray(r.standard_normal(kshape + (shape[-1],)), jnp.float32))


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-12))


def conv(impl: str, **options):
  """depthwise_conv in form `impl`, the forms tuned by `options` (DepthwiseOptions' fields)."""
  kernels = Kernels(depthwise=impl, platform='cpu', depthwise_options=DepthwiseOptions(**options))
  return lambda x, k: dw.depthwise_conv(x, k, kernels)


def _barriers(f, x) -> int:
  return str(jax.make_jaxpr(f)(x)).count(' cond[')


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('shape,ks', CASES)
def test_output_and_grads_match_grouped_conv(impl, shape, ks):
  x, k = _data(shape, ks)

  def out_and_grads(f):
    loss = lambda x, k: jnp.sum(jnp.sin(f(x, k)) * jnp.arange(x.shape[2], dtype=x.dtype)[:, None])
    return jax.jit(lambda x, k: (f(x, k), jax.grad(loss, (0, 1))(x, k)))(x, k)
  y, (gx, gk) = out_and_grads(conv(impl))
  ry, (rx, rk) = out_and_grads(_ref)
  assert _rel(y, ry) <= 1e-4 and _rel(gx, rx) <= 1e-4 and _rel(gk, rk) <= 1e-4


@pytest.mark.parametrize('ks,loops', [((7, 7), 1), ((11, 5), 2), ((9, 13), 3)])
def test_shift_cb_channel_blocks_and_loops(ks, loops):
  # 49 / 55 / 117 taps: loops of at most 50 (SHIFT_CB_CHUNK_TAPS), split evenly; one band.
  x, k = _data((3, 9, 14, 11), ks)  # 11 channels: two blocks of 8, the second zero-padded.
  f = jax.jit(lambda x: conv('shift_cb', bands=1)(x, k))
  assert _barriers(f, x) == loops + 1  # each loop's sum and the input written.
  assert _rel(f(x), _ref(x, k)) <= 1e-5


def test_shift_cb_bands_sum_only_taps_that_reach_the_map():
  # 9 rows, 11-row kernel, 5 zero rows before: the top band's first 3 kernel rows and the bottom
  # band's last 3 read only padding.
  assert dw.row_bands(9, 11, 5, 3) == [(0, 3, 3, 11), (3, 6, 0, 11), (6, 9, 0, 8)]
  assert dw.row_bands(14, 27, 13, 1) == [(0, 14, 0, 27)]
  # 3 bands; loops of at most 50 taps per band, plus the input written: 11x5 -> bands of 8, 11 and
  # 8 kernel rows (40, 55, 40 taps: 1 + 2 + 1 loops); 5x11 banded along W (10 columns: 8, 11, 9
  # rows); 9x9 -> 7, 9, 7 rows (63, 81, 63 taps: 2 loops each).
  for ks, conds in [((11, 5), 5), ((5, 11), 5), ((9, 9), 7)]:
    x, k = _data((2, 9, 10, 11), ks)
    f = jax.jit(lambda x: conv('shift_cb', bands=3)(x, k))
    assert _barriers(f, x) == conds
    assert _rel(f(x), _ref(x, k)) <= 1e-5


def test_crop_keeps_only_taps_that_see_the_map():
  k = jnp.ones((47, 5, 2))
  cropped, ph, pw = dw.crop_kernel(k, 14, 14)
  assert cropped.shape == (27, 5, 2) and ph == (13, 13) and pw == (2, 2)
  assert dw.crop_kernel(k, 30, 30)[0].shape == (47, 5, 2)


def test_even_kernel_falls_back_to_grouped_conv_shape():
  x, k = _data((1, 6, 6, 2), (4, 3))
  y = conv('fft')(x, k)
  assert y.shape == _ref(x, k).shape == (1, 7, 6, 2)
  assert _rel(y, _ref(x, k)) <= 1e-6


def test_uncropped_kernel_same_output():
  x, k = _data((1, 4, 5, 2), (11, 3))
  for impl in ('xla', 'shift'):
    assert _rel(conv(impl, crop=False)(x, k), _ref(x, k)) <= 1e-5


def test_auto_rules_and_names():
  assert dw.pick_auto((1, 56, 56, 8), (5, 5, 8), 'gpu') == 'xla'
  assert dw.pick_auto((1, 56, 56, 8), (5, 5, 8), 'cpu') == 'shift'
  assert dw.pick_auto((8, 7, 7, 8), (5, 5, 8), 'cpu') == 'shift'
  for side in (56, 14, 7):  # ConvNeXt's 7x7 on every stage map.
    assert dw.pick_auto((8, side, side, 8), (7, 7, 8), 'cpu') == 'shift_cb'
  assert dw.pick_auto((1, 56, 56, 8), (51, 5, 8), 'cpu') == 'shift_cb'
  assert dw.pick_auto((8, 56, 56, 8), (5, 51, 8), 'cpu') == 'shift_cb'
  assert dw.pick_auto((1, 28, 28, 8), (49, 5, 8), 'cpu') == 'shift_cb/toeplitz'
  assert dw.pick_auto((8, 28, 28, 8), (5, 49, 8), 'cpu') == 'shift_cb/toeplitz'
  assert dw.pick_auto((1, 14, 14, 8), (47, 5, 8), 'cpu') == 'shift_cb'
  assert dw.pick_auto((2, 14, 14, 8), (5, 47, 8), 'cpu') == 'shift_cb'
  assert dw.pick_auto((4, 14, 14, 8), (5, 47, 8), 'cpu') == 'shift_cb/toeplitz'
  assert dw.pick_auto((1, 7, 7, 8), (5, 13, 8), 'cpu') == 'shift_cb'
  assert dw.pick_auto((32, 7, 7, 8), (13, 13, 8), 'cpu') == 'shift_cb'
  assert dw.pick_auto((1, 56, 56, 8), (51, 51, 8), 'cpu') == 'fft'
  assert dw.pick_auto((8, 28, 28, 8), (49, 49, 8), 'cpu') == 'fft'
  assert dw.pick_auto((1, 14, 14, 8), (47, 47, 8), 'cpu') == 'shift_cb/fft'
  x, k = _data((1, 6, 5, 2), (3, 3))
  assert _rel(dw.depthwise_conv(x, k, Kernels(depthwise='auto', platform='cpu')), _ref(x, k)) <= 1e-5
  with pytest.raises(ValueError, match='Unknown depthwise impl'):
    Kernels(depthwise='nope')
  with pytest.raises(ValueError, match="'inference/training' pair"):
    Kernels(depthwise='fft/nope')
  with pytest.raises(ValueError, match='give Kernels a platform'):
    Kernels(depthwise='auto')


def test_pair_uses_inference_form_without_gradient():
  x, k = _data((1, 8, 8, 2), (5, 3))
  forward = str(jax.make_jaxpr(lambda x: conv('fft/toeplitz')(x, k))(x))
  backward = str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(conv('fft/toeplitz')(x, k) ** 2)))(x))
  assert ' fft[' in forward and 'dot_general' not in forward  # the FFT form alone.
  assert ' fft[' not in backward and 'dot_general' in backward  # the banded matmul, both ways.


def test_toeplitz_matrix_is_banded_kernel():
  taps = jnp.arange(1.0, 6.0)[:, None]  # offsets -2..2
  t = np.asarray(dw.toeplitz_matrix(taps, 2, 4)[:, :, 0])
  want = np.array([[3, 4, 5, 0], [2, 3, 4, 5], [1, 2, 3, 4], [0, 1, 2, 3]], np.float32)
  np.testing.assert_array_equal(t, want)


@pytest.mark.parametrize('form', sorted(dw._KERNEL_GRADS))
@pytest.mark.parametrize('shape,ks', [CASES[0], CASES[3], CASES[4], CASES[5], CASES[10]])
def test_shift_kernel_gradient_forms(form, shape, ks):
  x, k = _data(shape, ks)
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
  gx, gk = jax.jit(jax.grad(loss(conv('shift', kernel_grad=form)), (0, 1)))(x, k)
  rx, rk = jax.grad(loss(_ref), (0, 1))(x, k)
  assert _rel(gx, rx) <= 1e-4 and _rel(gk, rk) <= 1e-4


def test_kernel_gradient_rule():
  assert dw.kernel_grad_form((8, 28, 28, 192), (7, 7, 192)) == 'tree'
  assert dw.kernel_grad_form((8, 56, 56, 96), (7, 7, 96)) == 'fft'
  assert dw.kernel_grad_form((8, 56, 56, 124), (5, 5, 124)) == 'tree'
  assert dw.kernel_grad_form((8, 14, 14, 384), (7, 7, 384)) == 'batch_tree'
  assert dw.kernel_grad_form((8, 7, 7, 998), (5, 5, 998)) == 'batch_tree'
  assert dw.kernel_grad_form((16, 14, 14, 384), (7, 7, 384)) == 'tree'
  assert dw.kernel_grad_form((64, 4, 4, 192), (5, 5, 192)) == 'tree'


def _slices_per_computation(fn, x, k) -> list[int]:
  """The number of slices in each computation of `fn(x, k)` as XLA compiled it."""
  txt = jax.jit(fn).lower(x, k).compile().as_text()
  return [c.count(' slice(') for c in txt.split('\n\n')]


def _tap_sum_fusions(x, k, materialize: bool) -> int:
  """Fused computations holding a 25-tap sum (25+ slices) in the compiled gradient of sum(y**2)."""
  grad = jax.grad(lambda x, k: jnp.sum(jnp.square(conv('shift', materialize=materialize)(x, k))),
                  (0, 1))
  return sum(n >= 25 for n in _slices_per_computation(grad, x, k))


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason="XLA:CPU's fusion decisions")
def test_shift_output_is_computed_once():
  # The loss and the backward read y in several fusions; unwritten, XLA:CPU recomputes the 25-tap
  # sum in each (the kernel gradient's 25 tap fusions included).
  x, k = _data((2, 9, 9, 16), (5, 5))
  assert _tap_sum_fusions(x, k, materialize=True) == 2  # the forward and the input gradient.
  assert _tap_sum_fusions(x, k, materialize=False) > 25


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason="XLA:CPU's fusion decisions")
def test_optimization_barrier_does_not_stop_the_fusion():
  """Why `fusion_barrier` is a conditional: XLA:CPU fuses through `optimization_barrier`."""
  x, k = _data((2, 9, 9, 16), (5, 5))
  y = lambda x, k: jax.lax.optimization_barrier(conv('shift', materialize=False)(x, k))
  grad = jax.grad(lambda x, k: jnp.sum(jnp.square(y(x, k))), (0, 1))
  assert sum(n >= 25 for n in _slices_per_computation(grad, x, k)) > 25


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='chunks are written once on CPU only')
def test_long_shift_sums_run_in_chunks():
  """A 13x13 shift sum (169 taps) is several fused loops of whole kernel rows, not one."""
  x, k = _data((1, 9, 8, 2), (13, 13))
  slices = _slices_per_computation(conv('shift'), x, k)
  assert sum(slices) >= 169 and max(slices) <= 2 * dw.SHIFT_CHUNK_TAPS + 2
