"""Shared layers with the reference PyTorch numerics stated explicitly (DESIGN §5).

Every depthwise convolution in the model zoo is a `DepthwiseConv`, every dense one is built by
`conv` and every LayerNorm by `layer_norm`; each takes the model's `kernels` (kernels.Kernels) and
computes in the form it names (lkd_jax/kernels/).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lkd_jax.kernels import Kernels
from lkd_jax.kernels import conv as conv_forms
from lkd_jax.kernels import layer_norm as layer_norm_forms
from lkd_jax.kernels.depthwise import depthwise_conv

TORCH_BN_EPS = 1e-5
TORCH_BN_MOMENTUM = 0.9  # flax convention: running = m * running + (1 - m) * batch; torch momentum 0.1.


def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, as torch.nn.GELU."""
  return jax.nn.gelu(x, approximate=False)


class DepthwiseConv(nnx.Module):
  """Depthwise conv, stride 1, 'same' padding per axis, in the form `kernels.depthwise` names;
  kernel stored as (kh, kw, 1, C) like nnx.Conv."""

  def __init__(self, channels: int, kernel_size: tuple[int, int], *, use_bias: bool = False,
               kernels: Kernels, rngs: nnx.Rngs):
    self.kernels = kernels
    kh, kw = kernel_size
    init = nnx.initializers.variance_scaling(1.0 / 3, 'fan_in', 'uniform', in_axis=(0, 1, 2),
                                             out_axis=3)  # torch's kaiming_uniform(a=sqrt(5)).
    self.kernel = nnx.Param(init(rngs.params(), (kh, kw, 1, channels)))
    self.bias = nnx.Param(jnp.zeros((channels,))) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = depthwise_conv(x, self.kernel[...][:, :, 0, :], self.kernels)
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


class LayerNorm(nnx.LayerNorm):
  """nnx.LayerNorm over the last axis (same parameters) whose statistics are computed in `form`
  (kernels/layer_norm.py; 'reduce' is nnx's own)."""

  def __init__(self, num_features: int, *, form: str, **kwargs):
    super().__init__(num_features, **kwargs)
    self.form = form

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    if self.form == 'reduce' or mask is not None or self.reduction_axes not in (-1, (-1,)):
      return super().__call__(x, mask=mask)
    x, scale, bias = self.promote_dtype((x, self.scale[...], self.bias[...]), dtype=self.dtype)
    mean, var = layer_norm_forms.statistics(x.astype(jnp.promote_types(x.dtype, jnp.float32)),
                                            self.form)
    y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype or jnp.result_type(x, scale, bias))


def layer_norm(dim: int, eps: float, rngs: nnx.Rngs, kernels: Kernels) -> LayerNorm:
  """LayerNorm over the channel (last) axis, explicit epsilon, statistics in `kernels.layer_norm`."""
  return LayerNorm(dim, epsilon=eps, form=kernels.layer_norm, rngs=rngs)


def conv(cin: int, cout: int, k: int | tuple[int, int], *, stride: int = 1, padding: int | None = None,
         use_bias: bool = True, kernels: Kernels, rngs: nnx.Rngs, **kwargs) -> nnx.Conv:
  """Dense conv with PyTorch's explicit symmetric zero padding (default k//2), in `kernels.conv`."""
  kh, kw = (k, k) if isinstance(k, int) else k
  ph, pw = (kh // 2, kw // 2) if padding is None else (padding, padding)
  return nnx.Conv(cin, cout, (kh, kw), strides=stride, padding=((ph, ph), (pw, pw)),
                  use_bias=use_bias, conv_general_dilated=conv_forms.ConvGeneralDilated(kernels.conv),
                  rngs=rngs, **kwargs)


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
