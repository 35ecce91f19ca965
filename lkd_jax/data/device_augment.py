"""The device half of the train recipe (data.augment_on 'device', or 'auto' off CPU): resize, flip,
RandAugment, erasing.

The host (tf.data, augment.train_preprocess_for_device) only decodes each example's random-resized-
crop window and pads it into a fixed canvas; this module finishes timm's train transform inside the
jitted step, once per batch, before normalisation and mixup (lkd_jax/step.py::prepare_batch), so the
teacher and the student see the same pixels. Why: on the host the antialiased resize, RandAugment
and random erasing cost 4.7 of the 6.3 CPU ms per ImageNet photo (benchmarks/input_pipeline.py:
6.3 ms with everything in tf.data, 1.6 ms for the host half), while on an accelerator they are
1.1% of a SLaK-T -> ResNet-50 KD step's FLOPs. On XLA:CPU the same work is slow (~35 ms per image,
every RandAugment branch computed), hence augment_on='auto' keeps it on the host there.

Semantics are augment.train_preprocess's: the same crop window (same host seed), the same resize
weights (device_ops.resize_from_canvas), flip p=hflip, timm RandAugment (n ops, uniform choice or
w0 weights, each applied with p=0.5 at magnitude N(m, mstd) clipped to [0, mmax], random sign) and
timm RandomErasing (area 0.02-1/3, log aspect (0.3, 1/0.3), 10 tries, 'pixel'/'rand'/'const').
Per-example randomness comes from the host's per-example seed ('aug_seed', uint32 [2], a pure
function of (run seed, epoch, process, example index)), so a resumed run, whose host batches are
bitwise those of the uninterrupted run, also gets the same device pixels; the draws are JAX's, not
TF's, so the two paths agree in distribution, not per example. Per-example op choices run as
vmap'ed lax.switch: on a batch every branch is computed and selected (cheap next to the networks).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections

from lkd_jax.data import device_ops, recipe
from lkd_jax.errors import SetupError

ERASE_MODES = ('pixel', 'rand', 'const')
AUGMENT_ON = ('auto', 'device', 'host')


def canvas_size(d: ml_collections.ConfigDict) -> int:
  """Side of the square canvas that carries unresized crops to the device (data.canvas, 0 = 2 S)."""
  return d.canvas or 2 * d.image_size


def on_device(d: ml_collections.ConfigDict, backend: str | None = None) -> bool:
  """Whether the device finishes the train recipe: data.augment_on 'device', or 'auto' where JAX
  runs on an accelerator (on a CPU backend the host's TF ops are the cheaper place)."""
  if d.augment_on == 'auto':
    return (backend or jax.default_backend()) != 'cpu'
  return d.augment_on == 'device'


def check(d: ml_collections.ConfigDict) -> None:
  """SetupError naming the fix for a data config the device (or host) augmentation cannot run."""
  if d.augment_on not in AUGMENT_ON:
    raise SetupError(f"data.augment_on={d.augment_on!r}: use 'device' (resize, flip, RandAugment "
                     "and erasing in the jitted step), 'host' (all in tf.data) or 'auto' (device "
                     "on an accelerator, host on CPU).")
  if d.augment_on != 'host' and canvas_size(d) < d.image_size:
    raise SetupError(f'data.canvas={d.canvas} is smaller than data.image_size={d.image_size}: set '
                     'data.canvas=0 (2 * image_size) or at least image_size.')
  try:
    recipe.kernel(d.interpolation)
    if d.randaugment:
      recipe.parse_rand_augment_spec(d.randaugment)
  except ValueError as e:
    raise SetupError(str(e)) from None
  if d.remode not in ERASE_MODES:
    raise SetupError(f'data.remode={d.remode!r}: use one of {", ".join(ERASE_MODES)}.')


# ----------------------------------------------------------------------------- RandAugment
# One uniform draw per example feeds every random choice (augment_one slices it; normals by the
# inverse CDF or Box-Muller, Gumbels by -log(-log u)): each jax.random call site compiles its own
# hash, and a few dozen of them made the step's compile several times slower.


def _choose_ops(u: jax.Array, spec: recipe.RandAugmentSpec) -> jax.Array:
  """Op indices [n] from uniforms u [len(transforms)]: uniform with replacement (u[:n]), or weighted
  without replacement (Gumbel top-k) for w0."""
  num = len(spec.transforms)
  if spec.weight_idx is None:
    return jnp.minimum(jnp.floor(u[:spec.num_layers] * num).astype(jnp.int32), num - 1)
  logw = jnp.log(jnp.asarray(recipe.RAND_CHOICE_WEIGHTS_0, jnp.float32))
  gumbel = -jnp.log(-jnp.log(jnp.maximum(u, 1e-12)))
  return jax.lax.top_k(logw + gumbel, spec.num_layers)[1]


def _magnitude(u: jax.Array, spec: recipe.RandAugmentSpec) -> jax.Array:
  """timm AugmentOp magnitude from a uniform u: m, N(m, mstd) or U(0, m) (mstd > 100), clipped to
  [0, mmax]."""
  m = jnp.float32(spec.magnitude)
  if spec.magnitude_std == math.inf:
    m = u * spec.magnitude
  elif spec.magnitude_std > 0:
    m = m + spec.magnitude_std * jax.scipy.special.ndtri(jnp.clip(u, 1e-7, 1 - 1e-7))
  return jnp.clip(m, 0.0, spec.magnitude_max)


def rand_augment_draws(spec: str) -> int:
  """Uniforms rand_augment takes: one per transform (op choice), then apply, magnitude, sign per layer."""
  cfg = recipe.parse_rand_augment_spec(spec)
  return len(cfg.transforms) + 3 * cfg.num_layers if cfg.num_layers else 0


def rand_augment(image: jax.Array, u: jax.Array, spec: str) -> jax.Array:
  """timm RandAugment on one uint8 image from uniforms u [rand_augment_draws(spec)]: n ops, each
  applied with p=0.5 (augment.rand_augment)."""
  cfg = recipe.parse_rand_augment_spec(spec)
  if cfg.num_layers == 0:
    return image
  num = len(cfg.transforms)
  op_idx = _choose_ops(u[:num], cfg)
  per_layer = u[num:].reshape(cfg.num_layers, 3)   # apply, magnitude, sign
  branches = [functools.partial(_op_branch, name) for name in cfg.transforms]
  branches.append(lambda x, m, neg: x)

  def layer(i: jax.Array, x: jax.Array) -> jax.Array:   # a loop: the branches compile once
    apply, mag, sign = per_layer[i, 0] <= 0.5, _magnitude(per_layer[i, 1], cfg), per_layer[i, 2] > 0.5
    return jax.lax.switch(jnp.where(apply, op_idx[i], num), branches, x, mag, sign)
  return jax.lax.fori_loop(0, cfg.num_layers, layer, image)


def _op_branch(name: str, image: jax.Array, magnitude: jax.Array, negate: jax.Array) -> jax.Array:
  return device_ops.apply_op(image, name, magnitude, negate)


# ----------------------------------------------------------------------------- random erasing


def _erase_box(u: jax.Array, h: int, w: int, log_aspect: tuple[float, float], count: jax.Array,
               area=(0.02, 1 / 3)) -> tuple[jax.Array, jax.Array]:
  """timm RandomErasing box ([top, left, h, w] float32, found) after up to 10 tries, from uniforms
  u [4, 10] (augment._erase_box)."""
  target = (area[0] + (area[1] - area[0]) * u[0]) * h * w / count
  aspect = jnp.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * u[1])
  bh, bw = jnp.round(jnp.sqrt(target * aspect)), jnp.round(jnp.sqrt(target / aspect))
  ok = (bw < w) & (bh < h)
  top = jnp.minimum(jnp.floor(u[2] * (h - bh + 1)), h - bh)
  left = jnp.minimum(jnp.floor(u[3] * (w - bw + 1)), w - bw)
  k = jnp.argmax(ok)
  return jnp.stack([top[k], left[k], bh[k], bw[k]]), jnp.any(ok)


def erasing_draws(shape: tuple[int, ...], mode: str, count: int = 1) -> int:
  """Uniforms random_erasing takes for an image of `shape`: apply, count, 40 per box, noise."""
  noise = {'pixel': 2 * math.prod(shape), 'rand': 6, 'const': 0}[mode]
  return 2 + 40 * count + noise


def _normal(u: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """N(0, 1) of `shape` from 2 * prod(shape) uniforms in [0, 1) (Box-Muller)."""
  u1, u2 = (1.0 - u[:2 * math.prod(shape)]).reshape((2,) + tuple(shape))
  return jnp.sqrt(-2.0 * jnp.log(u1)) * jnp.cos(2.0 * math.pi * u2)


def random_erasing(image: jax.Array, u: jax.Array, prob: float, mode: str = 'pixel',
                   count: int = 1, min_aspect: float = 0.3) -> jax.Array:
  """timm RandomErasing on one uint8 image from uniforms u [erasing_draws(image.shape, mode, count)],
  fill device_ops.erase_fill(z) (augment.random_erasing)."""
  if prob <= 0:
    return image
  h, w = image.shape[:2]
  log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
  n = (jnp.minimum(jnp.floor(u[1] * count), count - 1) + 1).astype(jnp.int32)  # randint(1, count)
  yy, xx = jnp.arange(h, dtype=jnp.float32)[:, None], jnp.arange(w, dtype=jnp.float32)[None]
  mask = jnp.zeros((h, w), bool)
  for i in range(count):
    box, found = _erase_box(u[2 + 40 * i:42 + 40 * i].reshape(4, 10), h, w, log_aspect,
                            n.astype(jnp.float32))
    top, left, bh, bw = box
    inside = (yy >= top) & (yy < top + bh) & (xx >= left) & (xx < left + bw)
    mask |= inside & found & (i < n)
  noise_shape = image.shape if mode == 'pixel' else (1, 1, 3)
  z = _normal(u[2 + 40 * count:], noise_shape) if mode != 'const' else jnp.zeros(noise_shape)
  mask &= u[0] <= prob
  return jnp.where(mask[..., None], device_ops.erase_fill(z), image)


# ----------------------------------------------------------------------------- entry points


def augment_one(canvas: jax.Array, hw: jax.Array, key: jax.Array,
                d: ml_collections.ConfigDict) -> jax.Array:
  """One example: resize the canvas's hw crop to S, flip, RandAugment, erase -> uint8 [S, S, 3]."""
  size = d.image_size
  n_ra = rand_augment_draws(d.randaugment) if d.randaugment else 0
  n_re = erasing_draws((size, size, 3), d.remode, d.recount) if d.reprob > 0 else 0
  u = jax.random.uniform(key, (1 + n_ra + n_re,))
  image = device_ops.resize_from_canvas(canvas, hw, size, d.interpolation)
  if d.hflip > 0:
    image = jnp.where(u[0] < d.hflip, image[:, ::-1], image)
  if n_ra:
    image = rand_augment(image, u[1:1 + n_ra], d.randaugment)
  if n_re:
    image = random_erasing(image, u[1 + n_ra:], d.reprob, d.remode, count=d.recount)
  return image


def images(batch: dict[str, jax.Array], d: ml_collections.ConfigDict) -> jax.Array:
  """A batch's final uint8 pixels: batch['image'] itself, or, for a device-augment batch (one with
  'crop_hw' and 'aug_seed'), its canvases finished on the device."""
  if 'crop_hw' not in batch:
    return batch['image']
  keys = jax.random.wrap_key_data(batch['aug_seed'].astype(jnp.uint32), impl='threefry2x32')
  return jax.vmap(functools.partial(augment_one, d=d))(batch['image'], batch['crop_hw'], keys)
