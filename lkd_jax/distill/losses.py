"""Pure loss pieces on float32 logits; each returns a batch-mean scalar."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Cross-entropy with soft (mixed, smoothed) targets: mean_b -sum_c t log softmax(z) (timm SoftTargetCrossEntropy)."""
  return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1))


def kd_kl(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
  """T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean (Hinton et al. 2015)."""
  t = temperature
  log_p_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t)
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t)
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
  return t * t * jnp.mean(kl)


def accuracy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Top-1 agreement between argmax logits and argmax of (soft) targets."""
  return jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1))
