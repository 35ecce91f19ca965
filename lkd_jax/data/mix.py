"""Batch-level mixup / cutmix / label smoothing (timm Mixup, mode='batch'), applied once per batch on device.

It runs inside the fused step so the teacher and the student see the very same mixed pixels.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  """One-hot targets with label smoothing: on = 1 - s + s/C, off = s/C."""
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def _cutmix_mask(rng: jax.Array, h: int, w: int, lam: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Random box of area ~(1-lam) clipped to the image; returns (HxW mask of the box, corrected lam)."""
  ry, rx = jax.random.split(rng)
  cut = jnp.sqrt(1.0 - lam)
  ch, cw = (h * cut).astype(jnp.int32), (w * cut).astype(jnp.int32)
  cy = jax.random.randint(ry, (), 0, h)
  cx = jax.random.randint(rx, (), 0, w)
  y0, y1 = jnp.clip(cy - ch // 2, 0, h), jnp.clip(cy + ch // 2, 0, h)
  x0, x1 = jnp.clip(cx - cw // 2, 0, w), jnp.clip(cx + cw // 2, 0, w)
  yy, xx = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  box = (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)
  return box, 1.0 - ((y1 - y0) * (x1 - x0)) / (h * w)


def mix_batch(rng: jax.Array, images: jax.Array, labels: jax.Array, num_classes: int,
              cfg: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
  """Returns (pixels, soft targets) with mixup or cutmix against the flipped batch (timm semantics)."""
  targets = smooth_one_hot(labels, num_classes, cfg.label_smoothing)
  use_mixup, use_cutmix = cfg.mixup_alpha > 0, cfg.cutmix_alpha > 0
  if not (use_mixup or use_cutmix) or cfg.mix_prob <= 0:
    return images, targets
  r_apply, r_switch, r_lam_m, r_lam_c, r_box = jax.random.split(rng, 5)
  lam_mix = jax.random.beta(r_lam_m, cfg.mixup_alpha, cfg.mixup_alpha) if use_mixup else 1.0
  lam_cut = jax.random.beta(r_lam_c, cfg.cutmix_alpha, cfg.cutmix_alpha) if use_cutmix else 1.0
  if use_mixup and use_cutmix:
    do_cut = jax.random.uniform(r_switch) < cfg.switch_prob
  else:
    do_cut = jnp.asarray(use_cutmix)
  box, lam_box = _cutmix_mask(r_box, images.shape[1], images.shape[2], jnp.asarray(lam_cut))
  flipped = images[::-1]
  cut_images = jnp.where(box[None, :, :, None], flipped, images)
  mix_images = lam_mix * images + (1.0 - lam_mix) * flipped
  apply = jax.random.uniform(r_apply) < cfg.mix_prob
  lam = jnp.where(apply, jnp.where(do_cut, lam_box, lam_mix), 1.0).astype(jnp.float32)
  out = jnp.where(apply, jnp.where(do_cut, cut_images, mix_images.astype(images.dtype)), images)
  return out, lam * targets + (1.0 - lam) * targets[::-1]
