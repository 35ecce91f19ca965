"""Evaluation metrics: on-device masked sums per batch (exact over padded batches), finished on host.

Top-1/top-5 accuracy, NLL, ECE (equal-width confidence bins), ReaL accuracy, top-1 restricted to a
class subset (ImageNet-A/R), teacher-student top-1 agreement and KL(teacher || student), and the
ImageNet-C summaries: mCE (normalised by AlexNet) and the unnormalised mean error.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

ECE_BINS = 15

# The 15 standard ImageNet-C corruptions, in the order of Hendrycks & Dietterich (ICLR 2019) Table 1.
CORRUPTIONS = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur',
               'motion_blur', 'zoom_blur', 'snow', 'frost', 'fog', 'brightness', 'contrast',
               'elastic_transform', 'pixelate', 'jpeg_compression')
EXTRA_CORRUPTIONS = ('speckle_noise', 'gaussian_blur', 'spatter', 'saturate')
# AlexNet's top-1 error on each corruption, averaged over severities 1-5: `ALEXNET_ERR` of
# google-research/augmix imagenet.py ("Raw AlexNet errors taken from
# https://github.com/hendrycks/robustness"), in CORRUPTIONS order.
ALEXNET_ERR = dict(zip(CORRUPTIONS, (
    0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360,
    0.866816, 0.826572, 0.819324, 0.564592, 0.853204, 0.646056, 0.717840,
    0.606500)))


# ----------------------------------------------------------------------------------- on device

def restricted_top1(logits: jax.Array, classes: jax.Array) -> jax.Array:
  """The argmax over `classes` only (ImageNet-A/R), as an index into all classes."""
  return classes[jnp.argmax(logits[:, classes], -1)]


def batch_sums(logits: jax.Array, batch: Mapping[str, jax.Array], *,
               classes: jax.Array | None = None, teacher_logits: jax.Array | None = None,
               num_bins: int = ECE_BINS) -> dict[str, jax.Array]:
  """Masked sums of one batch: correct, correct5, loss_sum, count, ECE bins, ReaL and agreement.

  `classes`: evaluate top-1 over this class subset only. `batch['real']` (bool [B, C]) adds the
  ReaL sums; `teacher_logits` the agreement and KL(teacher || student) sums.
  """
  logits = logits.astype(jnp.float32)
  mask = batch['mask'].astype(jnp.float32)
  labels = batch['label']
  top1 = jnp.argmax(logits, -1) if classes is None else restricted_top1(logits, classes)
  correct = (top1 == labels).astype(jnp.float32)
  out = {'count': jnp.sum(mask), 'correct': jnp.sum(correct * mask)}
  if classes is None:
    top5 = jnp.any(jax.lax.top_k(logits, min(5, logits.shape[-1]))[1] == labels[:, None], -1)
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, labels[:, None], -1)[:, 0]
    conf = jnp.exp(jnp.max(logp, -1))
    # Bin b holds confidences in (b/num_bins, (b+1)/num_bins].
    bins = jnp.clip(jnp.ceil(conf * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
    seg = lambda v: jax.ops.segment_sum(v * mask, bins, num_segments=num_bins)
    out.update(correct5=jnp.sum(top5 * mask), loss_sum=jnp.sum(nll * mask),
               bin_count=seg(jnp.ones_like(conf)), bin_conf=seg(conf), bin_correct=seg(correct))
  if 'real' in batch:
    real = batch['real'].astype(jnp.float32)
    hit = jnp.take_along_axis(real, top1[:, None], -1)[:, 0]
    has = jnp.any(real > 0, -1).astype(jnp.float32)
    out.update(real_correct=jnp.sum(hit * has * mask), real_count=jnp.sum(has * mask))
  if teacher_logits is not None:
    t = teacher_logits.astype(jnp.float32)
    t_top1 = jnp.argmax(t, -1) if classes is None else restricted_top1(t, classes)
    logp_t, logp_s = jax.nn.log_softmax(t), jax.nn.log_softmax(logits)
    kl = jnp.sum(jnp.exp(logp_t) * (logp_t - logp_s), -1)
    out.update(agree=jnp.sum((t_top1 == top1) * mask), kl_sum=jnp.sum(kl * mask))
  return out


# -------------------------------------------------------------------------------------- on host

def ece(bin_count: np.ndarray, bin_conf: np.ndarray, bin_correct: np.ndarray) -> float:
  """Expected calibration error: sum over bins of |accuracy - mean confidence| weighted by size."""
  n = float(np.sum(bin_count))
  return float(np.sum(np.abs(bin_correct - bin_conf))) / n if n else float('nan')


def finish(totals: Mapping[str, Any]) -> dict[str, float]:
  """The metrics of summed `batch_sums` outputs (fractions in [0, 1])."""
  t = {k: np.asarray(v, np.float64) for k, v in totals.items()}
  n = float(t['count'])
  div = lambda a, b: float(a) / float(b) if float(b) else float('nan')
  out = {'count': int(n), 'top1': div(t['correct'], n)}
  if 'correct5' in t:
    out.update(top5=div(t['correct5'], n), nll=div(t['loss_sum'], n),
               ece=ece(t['bin_count'], t['bin_conf'], t['bin_correct']))
  if 'real_correct' in t:
    out.update(real_top1=div(t['real_correct'], t['real_count']), real_count=int(t['real_count']))
  if 'agree' in t:
    out.update(agreement=div(t['agree'], n), kl=div(t['kl_sum'], n))
  return out


def corruption_summary(errors: Mapping[str, Mapping[int, float]], alexnet: bool = True
                       ) -> dict[str, Any]:
  """ImageNet-C summaries of top-1 errors[corruption][severity].

  `ce[c]` = mean error over severities / AlexNet's (Hendrycks & Dietterich 2019, Eq. 1: the ratio
  of sums over severities 1-5); `mce` = their mean over the 15 standard corruptions, reported only
  when all 15 were evaluated at all 5 severities (else None; `ce` still lists what was run).
  `mean_error` = the unnormalised mean over severities, then over every evaluated corruption
  (the paper's robustness code, LK_Robustness, averages the 15 + 4 extra this way);
  `mean_error_15` the same over the standard 15 only. `alexnet=False` (not ImageNet-C, e.g. the
  embedded suite): no CE / mCE.
  """
  per = {c: float(np.mean(list(s.values()))) for c, s in errors.items() if s}
  ce = {c: per[c] / ALEXNET_ERR[c] for c in per if c in ALEXNET_ERR and alexnet}
  full = alexnet and all(c in errors and set(errors[c]) >= {1, 2, 3, 4, 5} for c in CORRUPTIONS)
  std = [per[c] for c in CORRUPTIONS if c in per]
  return {'error': per, 'ce': ce, 'mce': float(np.mean([ce[c] for c in CORRUPTIONS])) if full
          else None, 'mean_error': float(np.mean(list(per.values()))) if per else float('nan'),
          'mean_error_15': float(np.mean(std)) if std else float('nan')}
