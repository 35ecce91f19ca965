"""kernels.resolve: a config's impl names -> the Kernels a run's models compute with, per platform."""
import subprocess
import sys

import pytest

from configs import common
from lkd_jax import kernels
from lkd_jax.errors import SetupError
from lkd_jax.kernels import DepthwiseOptions, Kernels


def test_auto_per_platform_and_host():
  config = common.base_config()  # depthwise_impl, conv_impl, layer_norm_impl: 'auto'.
  assert kernels.resolve(config, 'cpu', isa='avx2') == Kernels(
      'auto', 'matmul', 'dot/reduce', 'cpu', DepthwiseOptions(materialize=True))
  assert kernels.resolve(config, 'cpu', isa='avx512f').conv == 'matmul_reshape'
  for platform in ('gpu', 'tpu'):
    assert kernels.resolve(config, platform) == Kernels(
        'auto', 'xla', 'reduce', platform, DepthwiseOptions(materialize=False))


def test_named_forms_are_kept():
  config = {'depthwise_impl': 'shift_cb/toeplitz', 'conv_impl': 'xla', 'layer_norm_impl': 'reduce'}
  chosen = kernels.resolve(config, 'cpu')
  assert (chosen.depthwise, chosen.conv, chosen.layer_norm) == ('shift_cb/toeplitz', 'xla', 'reduce')
  assert kernels.resolve({}, 'cpu', isa='avx2') == kernels.resolve(
      {'depthwise_impl': 'auto', 'conv_impl': 'auto', 'layer_norm_impl': 'auto'}, 'cpu', isa='avx2')


@pytest.mark.parametrize('key,name', [('depthwise_impl', 'fft1d'), ('depthwise_impl', 'toeplitz_cm'),
                                      ('depthwise_impl', 'shift/nope'), ('conv_impl', 'einsum'),
                                      ('layer_norm_impl', 'dot')])
def test_unknown_names_are_setup_errors_naming_the_choices(key, name):
  with pytest.raises(SetupError, match=f"Unknown {key[:-5]} impl '{name}'; choose one of"):
    kernels.resolve({key: name}, 'cpu')


def test_kernels_are_values():
  """Frozen and hashable: models hold them as static attributes, equal choices build equal graphs."""
  assert Kernels() == Kernels('xla', 'xla', 'reduce') and hash(Kernels()) == hash(Kernels())
  with pytest.raises(AttributeError):
    Kernels().depthwise = 'shift'  # type: ignore[misc]
  with pytest.raises(ValueError, match='kernel_grad'):
    DepthwiseOptions(kernel_grad='scatter')


def test_package_imports_no_jax():
  """lkd_jax.main applies kernels/host_malloc.py before JAX starts its threads."""
  code = 'import sys, lkd_jax.kernels.host_malloc; print("jax" in sys.modules)'
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == 'False'
