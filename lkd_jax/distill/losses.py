"""Pure loss pieces on float32 logits / NHWC feature maps; each returns a batch-mean scalar.

Every piece that reads the teacher wraps it in `jax.lax.stop_gradient` itself, so no gradient can
reach the teacher even if a caller forgets (the fused step also stops it, DESIGN §1).
Batch means are plain `jnp.mean` over axis 0: under `jax.jit` with a batch-sharded input they are
reductions over the GLOBAL batch (XLA inserts the all-reduce), never per device.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_sg = jax.lax.stop_gradient


def _f32(x: jax.Array) -> jax.Array:
  return x.astype(jnp.float32)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Cross-entropy with soft (mixed, smoothed) targets: mean_b -sum_c t log softmax(z) (timm SoftTargetCrossEntropy)."""
  return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(_f32(logits)), axis=-1))


def kd_kl(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
  """T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean (Hinton et al. 2015)."""
  t = temperature
  log_p_t = jax.nn.log_softmax(_f32(_sg(teacher_logits)) / t)
  log_p_s = jax.nn.log_softmax(_f32(student_logits) / t)
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
  return t * t * jnp.mean(kl)


def target_index(targets: jax.Array) -> jax.Array:
  """Hard class of (mixed, smoothed) soft targets: argmax, as NKD/DKD do under mixup (cls_KD nkd.py)."""
  return jnp.argmax(targets, axis=-1)


def _non_target_log_softmax(logits: jax.Array, target: jax.Array, temperature: float
                            ) -> tuple[jax.Array, jax.Array]:
  """(log softmax over the C-1 non-target logits / T, target mask); the target column is 0 and excluded.

  Exact removal of the target column (masked logsumexp), not the `-1000 * onehot` trick: stable for
  any logit scale, and identical to deleting the column (cls_KD nkd.py `logit_s[mask].reshape(N, -1)`).
  """
  z = _f32(logits) / temperature
  is_target = jax.nn.one_hot(target, z.shape[-1], dtype=bool)
  lse = jax.nn.logsumexp(jnp.where(is_target, -jnp.inf, z), axis=-1, keepdims=True)
  return jnp.where(is_target, 0.0, z - lse), is_target


def nkd_terms(student_logits: jax.Array, teacher_logits: jax.Array, target: jax.Array,
              temperature: float) -> tuple[jax.Array, jax.Array]:
  """NKD's (target term, non-target term) before weighting (Yang et al. 2023, arXiv 2303.13005; cls_KD nkd.py).

  target term     = -mean_n  t_t * log s_t                 (T = 1, t_t = teacher target prob, detached)
  non-target term = -T^2 mean_n sum_{i!=t} T^_i log S^_i    (T^, S^: softmax over the C-1 non-target logits at T)
  """
  s_log = jax.nn.log_softmax(_f32(student_logits))
  t_prob = jax.nn.softmax(_f32(_sg(teacher_logits)))
  s_t = jnp.take_along_axis(s_log, target[:, None], axis=-1)[:, 0]
  t_t = jnp.take_along_axis(t_prob, target[:, None], axis=-1)[:, 0]
  target_term = -jnp.mean(t_t * s_t)
  log_s_hat, is_target = _non_target_log_softmax(student_logits, target, temperature)
  log_t_hat, _ = _non_target_log_softmax(_sg(teacher_logits), target, temperature)
  t_hat = jnp.where(is_target, 0.0, jnp.exp(log_t_hat))
  non_target = -temperature ** 2 * jnp.mean(jnp.sum(t_hat * log_s_hat, axis=-1))
  return target_term, non_target


def dkd_terms(student_logits: jax.Array, teacher_logits: jax.Array, target: jax.Array,
              temperature: float) -> tuple[jax.Array, jax.Array]:
  """DKD's (TCKD, NCKD), each T^2-scaled, batch mean (Zhao et al. CVPR 2022; mdistiller DKD.py).

  TCKD = T^2 KL([p_t, 1-p_t]_teacher || [p_t, 1-p_t]_student), binary target-vs-rest at temperature T;
  NCKD = T^2 KL(p^_teacher || p^_student) over the C-1 non-target classes at temperature T.
  """
  t = temperature
  log_p_s = jax.nn.log_softmax(_f32(student_logits) / t)
  log_p_t = jax.nn.log_softmax(_f32(_sg(teacher_logits)) / t)
  ls_t = jnp.take_along_axis(log_p_s, target[:, None], axis=-1)[:, 0]
  lt_t = jnp.take_along_axis(log_p_t, target[:, None], axis=-1)[:, 0]
  # log(1 - p) computed stably from log p.
  log1m = lambda lp: jnp.log(jnp.maximum(-jnp.expm1(lp), 1e-30))
  ls_o, lt_o = log1m(ls_t), log1m(lt_t)
  pt_t = jnp.exp(lt_t)
  tckd = pt_t * (lt_t - ls_t) + (1.0 - pt_t) * (lt_o - ls_o)
  log_s_hat, is_target = _non_target_log_softmax(student_logits, target, t)
  log_t_hat, _ = _non_target_log_softmax(_sg(teacher_logits), target, t)
  t_hat = jnp.where(is_target, 0.0, jnp.exp(log_t_hat))
  nckd = jnp.sum(t_hat * (log_t_hat - log_s_hat), axis=-1)
  return t * t * jnp.mean(tckd), t * t * jnp.mean(nckd)


def _pearson_rows(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Pearson correlation of each row of a with the same row of b (DIST's cosine of centred rows)."""
  a = a - jnp.mean(a, axis=1, keepdims=True)
  b = b - jnp.mean(b, axis=1, keepdims=True)
  return jnp.sum(a * b, axis=1) / (jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1) + eps)


def dist_terms(student_logits: jax.Array, teacher_logits: jax.Array, tau: float
               ) -> tuple[jax.Array, jax.Array]:
  """DIST's (inter, intra) relation losses, each tau^2-scaled (Huang et al. NeurIPS 2022; hunto dist_kd.py).

  inter = 1 - mean_n Pearson(y_s[n, :], y_t[n, :])   (per example, across classes)
  intra = 1 - mean_c Pearson(y_s[:, c], y_t[:, c])   (per class, across the batch: the GLOBAL batch
          under jit with a batch-sharded input; it depends on batch composition, not per device).
  """
  y_s = jax.nn.softmax(_f32(student_logits) / tau)
  y_t = jax.nn.softmax(_f32(_sg(teacher_logits)) / tau)
  inter = 1.0 - jnp.mean(_pearson_rows(y_s, y_t))
  intra = 1.0 - jnp.mean(_pearson_rows(y_s.T, y_t.T))
  return tau ** 2 * inter, tau ** 2 * intra


def layer_norm_no_affine(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Non-affine LayerNorm over the channel (last) axis, per position; torch's eps 1e-5 as in FD's `ln_tgt`."""
  x = _f32(x)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def match_spatial(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """The rule when student and teacher maps differ in size: resize the (projected) STUDENT map to the
  teacher's grid, bilinear (antialiased when shrinking), e.g. CNN 7x7 -> ViT 14x14 as LK-KD's
  resnet `project` interpolates the student to 14x14 for ViT teachers. The teacher target is never resized."""
  if x.shape[1:3] == tuple(hw):
    return x
  return jax.image.resize(x, (x.shape[0], *hw, x.shape[-1]), method='bilinear', antialias=True)


def smooth_l1(pred: jax.Array, target: jax.Array, beta: float) -> jax.Array:
  """torch SmoothL1Loss(beta), mean over all elements: 0.5 d^2/beta if |d| < beta else |d| - beta/2."""
  d = jnp.abs(pred - target)
  return jnp.mean(jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta))


def feature_distance(projected_student: jax.Array, teacher_map: jax.Array, kind: str = 'smooth_l1',
                     beta: float = 2.0) -> jax.Array:
  """FD distance between a projected student map and LN_noaffine(teacher map) (Wei et al. 2022 FD:
  SmoothL1(beta=2) against `LayerNorm(C, elementwise_affine=False)` of the detached teacher)."""
  target = layer_norm_no_affine(_sg(teacher_map))
  pred = match_spatial(_f32(projected_student), target.shape[1:3])
  if kind == 'smooth_l1':
    return smooth_l1(pred, target, beta)
  if kind == 'mse':
    return jnp.mean(jnp.square(pred - target))
  raise ValueError(f"fd_loss={kind!r}; choose 'smooth_l1' or 'mse'.")


def accuracy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Top-1 agreement between argmax logits and argmax of (soft) targets."""
  return jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1))
