"""ResNet-D pieces: torch's ceil-mode average pool without padded elements, and the deep-stem model."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lkd_jax.models.resnet import Bottleneck, ResNet, avg_pool_ceil


def test_avg_pool_ceil_averages_only_valid_elements():
  x = np.arange(2 * 5 * 5 * 3, dtype=np.float32).reshape(2, 5, 5, 3)
  got = np.asarray(avg_pool_ceil(jnp.asarray(x), 2))
  assert got.shape == (2, 3, 3, 3)
  for i in range(3):
    for j in range(3):  # torch AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
      np.testing.assert_allclose(got[:, i, j], x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean((1, 2)))


def test_deep_stem_avg_down_resnet_keys_and_shapes():
  graph, state = nnx.split(nnx.eval_shape(lambda: ResNet(
      num_classes=3, block=Bottleneck, layers_per_stage=(1, 1, 1, 1), channels=(4, 8, 8, 8),
      deep_stem=True, avg_down=True, rngs=nnx.Rngs(0))))
  keys = {'.'.join(map(str, p)) for p, _ in nnx.to_flat_state(state)}
  assert {'conv1.0.kernel', 'conv1.1.scale', 'conv1.3.kernel', 'conv1.4.scale', 'conv1.6.kernel',
          'layer2.0.downsample.1.kernel', 'layer2.0.downsample.2.scale'} <= keys
  logits, feats = jax.eval_shape(lambda s, x: nnx.merge(graph, s)(x, train=False), state,
                                 jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  assert logits.shape == (2, 3) and feats['stage4'].shape == (2, 1, 1, 32)
