"""ResNet-18/34/50/101 in the torchvision/timm layout (`conv1`, `bn1`, `layer1.0.conv1`, `downsample.0`, `fc`),
and ResNet-50-D (timm `resnet50d`: deep stem `conv1.{0,1,3,4,6}`, average-pool shortcut `downsample.{1,2}`)."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lkd_jax.kernels import Kernels, pool
from lkd_jax.models import layers
from lkd_jax.models.registry import register

# torchvision init: kaiming_normal(fan_out, relu) for every conv.
STEM_WIDTH = 64
_HE_FAN_OUT = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class BasicBlock(nnx.Module):
  """Two 3x3 convs (torchvision BasicBlock)."""
  expansion = 1

  def __init__(self, cin: int, width: int, stride: int, drop_path: float, zero_init_last: bool,
               *, avg_down: bool = False, kernels: Kernels, rngs: nnx.Rngs):
    cout = width * self.expansion
    self.conv1 = _conv(cin, width, 3, stride=stride, use_bias=False, kernels=kernels, rngs=rngs)
    self.bn1 = layers.BatchNorm(width)
    self.conv2 = _conv(width, cout, 3, use_bias=False, kernels=kernels, rngs=rngs)
    self.bn2 = layers.BatchNorm(cout, scale_init=0.0 if zero_init_last else 1.0)
    self.downsample = _downsample(cin, cout, stride, avg_down, kernels, rngs)
    self.drop_path = layers.DropPath(drop_path, rngs=rngs)

  def residual(self, x: jax.Array, train: bool) -> jax.Array:
    x = jax.nn.relu(self.bn1(self.conv1(x), train))
    return self.bn2(self.conv2(x), train)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    shortcut = x if self.downsample is None else _shortcut(self.downsample, x, train)
    return jax.nn.relu(shortcut + self.drop_path(self.residual(x, train), train))


class Bottleneck(BasicBlock):
  """1x1 -> 3x3 (stride) -> 1x1 with expansion 4 (torchvision v1.5 Bottleneck)."""
  expansion = 4

  def __init__(self, cin: int, width: int, stride: int, drop_path: float, zero_init_last: bool,
               *, avg_down: bool = False, kernels: Kernels, rngs: nnx.Rngs):
    cout = width * self.expansion
    self.conv1 = _conv(cin, width, 1, use_bias=False, kernels=kernels, rngs=rngs)
    self.bn1 = layers.BatchNorm(width)
    self.conv2 = _conv(width, width, 3, stride=stride, use_bias=False, kernels=kernels, rngs=rngs)
    self.bn2 = layers.BatchNorm(width)
    self.conv3 = _conv(width, cout, 1, use_bias=False, kernels=kernels, rngs=rngs)
    self.bn3 = layers.BatchNorm(cout, scale_init=0.0 if zero_init_last else 1.0)
    self.downsample = _downsample(cin, cout, stride, avg_down, kernels, rngs)
    self.drop_path = layers.DropPath(drop_path, rngs=rngs)

  def residual(self, x: jax.Array, train: bool) -> jax.Array:
    x = jax.nn.relu(self.bn1(self.conv1(x), train))
    x = jax.nn.relu(self.bn2(self.conv2(x), train))
    return self.bn3(self.conv3(x), train)


def _conv(*args, **kwargs) -> nnx.Conv:
  return layers.conv(*args, kernel_init=_HE_FAN_OUT, **kwargs)


def _downsample(cin: int, cout: int, stride: int, avg_down: bool, kernels: Kernels,
                rngs: nnx.Rngs) -> nnx.List | None:
  """[1x1 conv (stride), BN], or with `avg_down` (ResNet-D) [2x2 average pool (stride) or None,
  1x1 conv, BN]: the pool has no parameters, so its slot keeps timm's key indices."""
  if stride == 1 and cin == cout:
    return None
  bn = layers.BatchNorm(cout)
  if avg_down:
    return nnx.List([stride if stride > 1 else None,
                     _conv(cin, cout, 1, padding=0, use_bias=False, kernels=kernels, rngs=rngs), bn])
  return nnx.List([_conv(cin, cout, 1, stride=stride, padding=0, use_bias=False, kernels=kernels,
                         rngs=rngs), bn])


def _shortcut(downsample: nnx.List, x: jax.Array, train: bool) -> jax.Array:
  if len(downsample) == 3:  # ResNet-D: average pool, then the 1x1 conv at stride 1.
    if downsample[0] is not None:
      x = avg_pool_ceil(x, downsample[0])
    return downsample[2](downsample[1](x), train)
  return downsample[1](downsample[0](x), train)


def avg_pool_ceil(x: jax.Array, k: int) -> jax.Array:
  """torch AvgPool2d(k, k, ceil_mode=True, count_include_pad=False) on NHWC: a partial window at the
  bottom/right edge averages only its valid elements."""
  pad = [(0, 0), (0, -x.shape[1] % k), (0, -x.shape[2] % k), (0, 0)]
  window, strides = (1, k, k, 1), (1, k, k, 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
  count = jax.lax.reduce_window(jnp.ones(x.shape[1:3] + (1,), x.dtype)[None], 0.0, jax.lax.add,
                                window, strides, pad)
  return total / count


def _deep_stem(in_chans: int, widths: tuple[int, int], out: int, kernels: Kernels,
               rngs: nnx.Rngs) -> nnx.List:
  """timm's deep stem: 3x3/2 conv, BN, ReLU, 3x3 conv, BN, ReLU, 3x3 conv (ReLU slots are None)."""
  a, b = widths
  return nnx.List([_conv(in_chans, a, 3, stride=2, use_bias=False, kernels=kernels, rngs=rngs),
                   layers.BatchNorm(a), None,
                   _conv(a, b, 3, use_bias=False, kernels=kernels, rngs=rngs),
                   layers.BatchNorm(b), None,
                   _conv(b, out, 3, use_bias=False, kernels=kernels, rngs=rngs)])


def _stem(conv1: nnx.Module, x: jax.Array, train: bool) -> jax.Array:
  if not isinstance(conv1, nnx.List):
    return conv1(x)
  for layer in conv1:
    if layer is None:
      x = jax.nn.relu(x)
    else:
      x = layer(x, train) if isinstance(layer, layers.BatchNorm) else layer(x)
  return x


class ResNet(nnx.Module):
  """7x7/2 stem + 3x3/2 max-pool, four stages; returns (logits, {'stage1'..'stage4'}).

  `kernels`: the forms every conv computes with (default: XLA's own ops).
  """

  def __init__(self, *, num_classes: int, block: type[BasicBlock], layers_per_stage: Sequence[int],
               channels: Sequence[int] = (64, 128, 256, 512), drop_path_rate: float = 0.0,
               zero_init_last: bool = True, deep_stem: bool = False, avg_down: bool = False,
               in_chans: int = 3, kernels: Kernels = Kernels(), rngs: nnx.Rngs):
    # timm's plain stem is always 64 wide (its `stem_width` only sizes deep stems), whatever `channels`.
    self.conv1 = (_deep_stem(in_chans, (32, 32), STEM_WIDTH, kernels, rngs) if deep_stem else
                  _conv(in_chans, STEM_WIDTH, 7, stride=2, use_bias=False, kernels=kernels,
                        rngs=rngs))
    self.bn1 = layers.BatchNorm(STEM_WIDTH)
    rates = iter(layers.drop_path_rates(drop_path_rate, layers_per_stage))
    cin = STEM_WIDTH
    for i, (n, width) in enumerate(zip(layers_per_stage, channels)):
      blocks = []
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        blocks.append(block(cin, width, stride, next(rates), zero_init_last, avg_down=avg_down,
                            kernels=kernels, rngs=rngs))
        cin = width * block.expansion
      setattr(self, f'layer{i + 1}', nnx.List(blocks))
    self.fc = nnx.Linear(cin, num_classes, rngs=rngs)
    self.num_features = cin

  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    x = jax.nn.relu(self.bn1(_stem(self.conv1, x, train), train))
    x = pool.max_pool(x, 3, 2, 1)
    feats = {}
    for i in range(4):
      for blk in getattr(self, f'layer{i + 1}'):
        x = blk(x, train)
      feats[f'stage{i + 1}'] = x
    return self.fc(x.mean(axis=(1, 2))), feats


def _resnet(block, layers_per_stage, **defaults):
  def build(*, num_classes: int, rngs: nnx.Rngs, **kw) -> ResNet:
    return ResNet(num_classes=num_classes, block=block, layers_per_stage=layers_per_stage,
                  rngs=rngs, **{**defaults, **kw})
  return build


register('resnet18')(_resnet(BasicBlock, (2, 2, 2, 2)))
register('resnet34')(_resnet(BasicBlock, (3, 4, 6, 3)))
register('resnet50')(_resnet(Bottleneck, (3, 4, 6, 3)))
register('resnet101')(_resnet(Bottleneck, (3, 4, 23, 3)))
# ResNet-50-D (timm resnet50d; ScaleKD's advanced student): deep 32-32-64 stem, average-pool shortcut.
register('resnet50d')(_resnet(Bottleneck, (3, 4, 6, 3), deep_stem=True, avg_down=True))
# Tiny variants for tests and CPU demos.
register('resnet_atto')(_resnet(BasicBlock, (1, 1, 1, 1), channels=(16, 32, 64, 128)))
register('resnet50_atto')(_resnet(Bottleneck, (1, 1, 1, 1), channels=(16, 32, 64, 128)))
