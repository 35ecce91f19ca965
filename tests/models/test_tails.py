"""Teacher tails (ScaleKD's TPP): fed the teacher's own stage-3 input, the tail reproduces its forward."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lkd_jax import models
from lkd_jax.distill import scalekd

# Tiny teachers at 64 px; layer scale 1 so that every last-stage block changes the map.
TEACHERS = {
    'swin_atto': dict(img_size=64, window_size=4),
    'deit_atto': {},
    'slak_atto': dict(layer_scale_init_value=1.0),
    'convnext_atto': dict(layer_scale_init_value=1.0),
}


@functools.lru_cache(maxsize=None)
def _split(name):
  """(graphdef, state) of a tiny teacher, built once (building dominates these tests' time)."""
  return nnx.split(models.create(name, num_classes=10, seed=3, **TEACHERS[name]))


def _images(n=2):
  return jax.random.normal(jax.random.key(0), (n, 64, 64, 3))


def _tail_input(model, x):
  """The teacher's own input to its tail, and the class token (ViT) to pass with it."""
  if not hasattr(model, 'tail_start'):
    return model(x)[1]['stage3'], {}
  tokens, grid = model.tokens(x)
  for blk in model.blocks[:model.tail_start]:
    tokens = blk(tokens, False)
  b, _, c = tokens.shape
  return tokens[:, 1:].reshape(b, *grid, c), {'cls': tokens[:, :1]}


@pytest.mark.parametrize('name', sorted(TEACHERS))
def test_tail_reproduces_the_teachers_forward(name):
  graph, state = _split(name)

  @jax.jit
  def run(state, x):
    model = nnx.merge(graph, state)
    logits, feats = model(x)
    x3, kw = _tail_input(model, x)
    out = model.tail(x3, **kw)
    return out, model.final_map(feats), feats, logits, model.head(out)

  out, want, feats, logits, head_of_tail = run(state, _images())
  assert out.shape == want.shape == feats['stage4'].shape
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
  assert float(jnp.abs(want - want.mean()).max()) > 1e-2  # not a trivial map
  if name == 'swin_atto':  # the classifier reads the tail's map: GAP + fc
    np.testing.assert_allclose(head_of_tail, logits, rtol=1e-5, atol=1e-5)


def test_tail_is_differentiable_in_the_map_and_frozen_in_the_weights():
  graph, state = _split('deit_atto')
  x3 = jax.random.normal(jax.random.key(1), (2, 4, 4, 48))

  @jax.jit
  def grads(state, x3):
    f = lambda s, x: jnp.sum(nnx.merge(graph, scalekd.frozen(s)).tail(x) ** 2)
    return jax.grad(f, argnums=(0, 1))(state, x3)

  g_state, g_x = grads(state, x3)
  assert float(jnp.abs(g_x).max()) > 0
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(g_state)
             if jnp.issubdtype(g.dtype, jnp.inexact))
