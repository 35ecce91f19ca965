"""The CPU compiler options take convolutions off YNNPACK, change nothing else, and keep the results."""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lkd_jax import kernels
from lkd_jax.kernels import xla_options
from lkd_jax.models import registry


def _train_grad(options):
  """Compiled HLO text and parameter gradients of a tiny ResNet-50's train-mode loss, with the
  forms a CPU run resolves to."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
  model = registry.create('resnet50_atto', num_classes=5, seed=0,
                          kernels=kernels.resolve({}, jax.default_backend()))
  graph, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p):
    logits, _ = nnx.merge(graph, p, rest, copy=True)(x, train=True)
    return jnp.sum(jnp.sin(logits))
  compiled = jax.jit(jax.grad(loss), compiler_options=options).lower(params).compile()
  return compiled.as_text(), compiled(params)


def test_options_move_only_the_convolutions_and_keep_the_gradients():
  options = xla_options.compiler_options()
  default_hlo, default_grads = _train_grad(None)
  default = xla_options.ynn_fusions(default_hlo)
  if not any('convolution' in ops for ops in default):
    assert options is None  # this jaxlib keeps convolutions off YNNPACK already.
    pytest.skip('XLA:CPU does not hand convolutions to YNNPACK here')
  assert options is not None
  hlo, grads = _train_grad(options)
  assert xla_options.ynn_fusions(hlo) == collections.Counter(
      {ops: n for ops, n in default.items() if 'convolution' not in ops})
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(default_grads), strict=True):
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-4 * (float(jnp.max(jnp.abs(b))) + 1e-6)


def test_no_options_off_cpu_or_where_they_would_change_nothing():
  assert xla_options.compiler_options('gpu') is None and xla_options.compiler_options('tpu') is None
  default = collections.Counter({('convolution',): 1, ('dot',): 1})
  assert xla_options.options_for(default, collections.Counter({('dot',): 1})) is not None
  # The flag did not take the convolution off YNNPACK; it moved something else too; it failed.
  assert xla_options.options_for(default, default) is None
  assert xla_options.options_for(default, collections.Counter({('dot',): 2})) is None
  assert xla_options.options_for(default, None) is None
  assert xla_options.options_for(collections.Counter({('dot',): 1}), None) is None
