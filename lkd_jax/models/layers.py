"""Shared layers with the reference PyTorch numerics stated explicitly (DESIGN §5).

Every depthwise convolution in the model zoo goes through `depthwise_conv`, and every dense one
through `conv` (its arithmetic in conv.py), so their implementations can be chosen per platform and
shape in one place each.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lkd_jax.models import conv as _conv
from lkd_jax.models import depthwise as _dw
from lkd_jax.models.switch import ImplSwitch

TORCH_BN_EPS = 1e-5
TORCH_BN_MOMENTUM = 0.9  # flax convention: running = m * running + (1 - m) * batch; torch momentum 0.1.

# The depthwise implementations live in depthwise.py; these names are the public entry points.
DEPTHWISE_IMPLS = _dw.DEPTHWISE_IMPLS
depthwise_conv = _dw.depthwise_conv
set_depthwise_impl, get_depthwise_impl = _dw.set_depthwise_impl, _dw.get_depthwise_impl


def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, as torch.nn.GELU."""
  return jax.nn.gelu(x, approximate=False)


class DepthwiseConv(nnx.Module):
  """Depthwise conv, stride 1, 'same' padding per axis; kernel stored as (kh, kw, 1, C) like nnx.Conv."""

  def __init__(self, channels: int, kernel_size: tuple[int, int], *, use_bias: bool = False,
               rngs: nnx.Rngs):
    kh, kw = kernel_size
    init = nnx.initializers.variance_scaling(1.0 / 3, 'fan_in', 'uniform', in_axis=(0, 1, 2),
                                             out_axis=3)  # torch's kaiming_uniform(a=sqrt(5)).
    self.kernel = nnx.Param(init(rngs.params(), (kh, kw, 1, channels)))
    self.bias = nnx.Param(jnp.zeros((channels,))) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = depthwise_conv(x, self.kernel[...][:, :, 0, :])
    return y if self.bias is None else y + self.bias[...]


class BatchNorm(nnx.Module):
  """BatchNorm with PyTorch semantics: biased batch variance to normalise, unbiased one into running_var."""

  def __init__(self, num_features: int, *, eps: float = TORCH_BN_EPS,
               momentum: float = TORCH_BN_MOMENTUM, scale_init: float = 1.0):
    self.scale = nnx.Param(jnp.full((num_features,), scale_init, jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.eps, self.momentum = eps, momentum

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if train:
      axes = tuple(range(x.ndim - 1))
      xf = x.astype(jnp.float32)
      mean = xf.mean(axes)
      var = jnp.maximum((xf * xf).mean(axes) - mean * mean, 0.0)
      n = x.size // x.shape[-1]
      m = self.momentum
      self.mean[...] = m * self.mean[...] + (1 - m) * jax.lax.stop_gradient(mean)
      self.var[...] = m * self.var[...] + (1 - m) * jax.lax.stop_gradient(var * n / max(n - 1, 1))
    else:
      mean, var = self.mean[...], self.var[...]
    inv = jax.lax.rsqrt(var + self.eps) * self.scale[...]
    return (x * inv.astype(x.dtype) + (self.bias[...] - mean * inv).astype(x.dtype))


class DropPath(nnx.Module):
  """Stochastic depth per sample (timm's drop_path with scale_by_keep)."""

  def __init__(self, rate: float, *, rngs: nnx.Rngs):
    self.rate = rate
    self.rngs = rngs['dropout'].fork() if rate > 0 else None

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.rngs(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return x * mask.astype(x.dtype) / keep


LAYER_NORM_IMPLS = ('auto', 'reduce', 'dot', 'dot/reduce')
_LN_SWITCH = ImplSwitch('layer_norm', LAYER_NORM_IMPLS, auto=('dot/reduce', 'reduce'))
set_layer_norm_impl, get_layer_norm_impl = _LN_SWITCH.set, _LN_SWITCH.get


def _dot_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and fast variance (E[x^2] - E[x]^2, as nnx) over the last axis as two mat-vec products."""
  avg = jnp.full((x.shape[-1], 1), 1.0 / x.shape[-1], x.dtype)
  mean = jnp.dot(x, avg, precision=jax.lax.Precision.HIGHEST)
  mean2 = jnp.dot(x * x, avg, precision=jax.lax.Precision.HIGHEST)
  return mean, jnp.maximum(mean2 - mean * mean, 0.0)


def _reduce_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The same statistics as reductions over the last axis."""
  mean = jnp.mean(x, -1, keepdims=True)
  return mean, jnp.maximum(jnp.mean(x * x, -1, keepdims=True) - mean * mean, 0.0)


@jax.custom_vjp
def _dot_reduce_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`dot` statistics where no gradient flows (a frozen teacher); `reduce`'s forward and backward
  where one does (the transpose of the mat-vec is a K=1 matmul: ConvNeXt-T's train gradient was 5-7%
  slower with it; benchmarks/README.md, LayerNorm)."""
  return _dot_stats(x)


_dot_reduce_stats.defvjp(lambda x: jax.vjp(_reduce_stats, x), lambda vjp, g: vjp(g))
_STATS = {'dot': _dot_stats, 'dot/reduce': _dot_reduce_stats}


class LayerNorm(nnx.LayerNorm):
  """nnx.LayerNorm over the last axis (same parameters) whose statistics can be mat-vec products.

  `dot`: XLA:CPU hands a reduction to YNNPACK together with the elementwise ops that produce its
  input, materialising each of them: a 7x7 shift-and-add depthwise conv followed by LayerNorm takes
  23 ms instead of 9 ms (batch 8, 56x56x96; benchmarks/layer_norm.py). A dot keeps its producers in
  XLA's own fused loop. `reduce` is nnx's implementation (auto on GPU/TPU). `dot/reduce` (auto on
  CPU): `dot` without gradients, `reduce` statistics when differentiated.
  """

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    impl = _LN_SWITCH.resolve()
    if impl == 'reduce' or mask is not None or self.reduction_axes not in (-1, (-1,)):
      return super().__call__(x, mask=mask)
    x, scale, bias = self.promote_dtype((x, self.scale[...], self.bias[...]), dtype=self.dtype)
    mean, var = _STATS[impl](x.astype(jnp.promote_types(x.dtype, jnp.float32)))
    y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype or jnp.result_type(x, scale, bias))


def layer_norm(dim: int, eps: float, rngs: nnx.Rngs) -> LayerNorm:
  """LayerNorm over the channel (last) axis with an explicit epsilon."""
  return LayerNorm(dim, epsilon=eps, rngs=rngs)


def conv(cin: int, cout: int, k: int | tuple[int, int], *, stride: int = 1, padding: int | None = None,
         use_bias: bool = True, rngs: nnx.Rngs, **kwargs) -> nnx.Conv:
  """Dense conv with PyTorch's explicit symmetric zero padding (default k//2)."""
  kh, kw = (k, k) if isinstance(k, int) else k
  ph, pw = (kh // 2, kw // 2) if padding is None else (padding, padding)
  return nnx.Conv(cin, cout, (kh, kw), strides=stride, padding=((ph, ph), (pw, pw)),
                  use_bias=use_bias, conv_general_dilated=_conv.conv_general_dilated, rngs=rngs,
                  **kwargs)


def drop_path_rates(rate: float, depths: list[int] | tuple[int, ...]) -> list[float]:
  """Linearly increasing stochastic-depth rates over all blocks (timm/ConvNeXt rule)."""
  total = sum(depths)
  return [rate * i / max(total - 1, 1) for i in range(total)]


def trunc_normal_init(model: nnx.Module, rngs: nnx.Rngs, std: float = 0.02) -> None:
  """timm/ConvNeXt init: trunc_normal(std) on every conv/linear weight, zero biases."""
  init = nnx.initializers.truncated_normal(std)
  mods = [m for _, m in nnx.iter_modules(model) if isinstance(m, (nnx.Conv, nnx.Linear, DepthwiseConv))]
  keys = jax.random.split(rngs.params(), len(mods))  # one RNG draw: each draw is slow under tracing.
  for key, m in zip(keys, mods):
    # New Variables rather than `[...] =`: in-place writes are slow under nnx.eval_shape tracing.
    m.kernel = nnx.Param(init(key, m.kernel.shape))
    if m.bias is not None:
      m.bias = nnx.Param(jnp.zeros(m.bias.shape))


class Mlp(nnx.Module):
  """timm Mlp: fc1 -> exact GELU -> fc2."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(dim, hidden, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, dim, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(gelu(self.fc1(x)))


def attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float,
              bias: jax.Array | None = None) -> jax.Array:
  """softmax(q k^T * scale + bias) v over (..., heads, tokens, head_dim); softmax in float32."""
  logits = jnp.einsum('...qd,...kd->...qk', q * scale, k)
  if bias is not None:
    logits = logits + bias
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  return jnp.einsum('...qk,...kd->...qd', probs, v)
