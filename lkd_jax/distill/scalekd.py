"""ScaleKD (Fan et al., NeurIPS 2024): cross-attention projectors (CAP), dual-view feature mimicking
(DFM) and teacher parameter perception (TPP), as the official code (deep-optimization/ScaleKD,
`FreqMaskingDistillLossv2` + `distiller.py`) computes them; ../shared/notes/scalekd-spec.md cites each line.

For student maps s3, s4 (NHWC) and the teacher's final feature map t4 (`teacher.final_map`):

    q_sp = TPP(CAP3_sp(s3)),  q_fr = TPP(CAP3_fr(s3))          TPP = teacher.tail (frozen weights)
    L = (1 - a_kd) CE + a3[0] Spat(q_sp, t4) + a3[1] Freq(q_fr, t4)
        + a4[0] Spat(CAP4_sp(s4; queries q_sp), t4) + a4[1] Freq(CAP4_fr(s4; queries q_fr), t4)
        + a_kd T^2 CE(softmax(z_t / T), softmax(z_s / T))

Decisions where the official code is ambiguous or buggy (spec §9), each also said where it applies:
* Frequency view: removing the (0,0) coefficient of the 2-D DCT-II is exactly removing each
  channel's spatial mean (spec §4), so `dct_highpass` is that mean removal (no DCT matmuls, any H x W).
* CAP BatchNorm: batch statistics always (the projectors are training-only and their running
  statistics are never read, so none are kept), over the GLOBAL batch under jit (the reference's are
  per device): the loss is then independent of the device count.
* One attention window (window_shapes (1, 1), every released config): the windowed variant scrambles
  tokens (bug 2) and is not offered.
* Stage-4 CAPs always take the TPP outputs as queries; their learned queries (Swin-S's
  self_query=True at stage 4) are never used by the official code (bug 7) and are not built.
* Teacher in eval mode by default (deterministic targets and tail); `scalekd_teacher_train_mode`
  reproduces the official train-mode teacher (bug 3) in the TPP tail: its drop path is active (the
  target t4 still comes from the step's eval-mode teacher forward).
* Tails (TPP) per family: Swin as the official (last patch merging + last stage + final norm); ViT:
  blocks depth - max(1, depth // 3) onwards + final norm on the patch tokens alone (no class token;
  the official 8-11 of 12); SLaK/ConvNeXt: last downsampling + last stage + the final LayerNorm per
  position, so that the tail and the target t4 are one function (mmcls ConvNeXt's tail drops it).
* KD is the official cross-entropy form (it differs from the KL by the teacher entropy, a constant),
  computed with log-softmax.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lkd_jax.distill import losses
from lkd_jax.errors import SetupError
from lkd_jax.models import layers

NORMALIZE_EPS = 1e-12  # F.normalize(dim=1): eps on the norm, not on the squared norm.
CAP_LN_EPS = 1e-5      # torch LayerNorm default (CAP `norm`).
BN_EPS = 1e-5
STAGES = ('s3', 's4')
VIEWS = ('spatial', 'frequency')

_sg = jax.lax.stop_gradient


# ---- DFM: dual-view feature mimicking --------------------------------------------------------

def channel_normalize(x: jax.Array) -> jax.Array:
  """x / max(||x||_2 over channels, 1e-12) at every position of an NHWC map (torch F.normalize(dim=1))."""
  # sqrt(max(|x|^2, eps^2)) == max(|x|, eps), with a zero (not NaN) gradient at x = 0, as torch's.
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, NORMALIZE_EPS ** 2))


def dct_highpass(x: jax.Array) -> jax.Array:
  """The official frequency view: inverse DCT-II of the map with its (0,0) coefficient zeroed, per
  channel; exactly the map minus each channel's spatial mean (spec §4), computed as that."""
  return x - jnp.mean(x, axis=(1, 2), keepdims=True)


def dfm_spatial(student: jax.Array, teacher: jax.Array) -> jax.Array:
  """sum_{b,h,w,c} (n_c(S) - n_c(T))^2 / B on NHWC maps (MSELoss(sum) / batch, not a mean)."""
  s = channel_normalize(student.astype(jnp.float32))
  t = channel_normalize(_sg(teacher).astype(jnp.float32))
  return jnp.sum(jnp.square(s - t)) / student.shape[0]


def dfm_frequency(student: jax.Array, teacher: jax.Array) -> jax.Array:
  """dfm_spatial of the DCT high-passed maps (each channel's spatial mean removed)."""
  return dfm_spatial(dct_highpass(student.astype(jnp.float32)),
                     dct_highpass(_sg(teacher).astype(jnp.float32)))


# ---- CAP: cross-attention projector ----------------------------------------------------------

def _torch_uniform(fan_in: int):
  """torch's default Conv/Linear weight and bias init: U(+-1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _linear(cin: int, cout: int, rngs: nnx.Rngs) -> nnx.Linear:
  init = _torch_uniform(cin)
  return nnx.Linear(cin, cout, kernel_init=init, bias_init=init, rngs=rngs)


class BatchStatsNorm(nnx.Module):
  """Affine BatchNorm that always normalises with the (global) batch's biased statistics; no running
  statistics: the CAP is used in training only (see the module docstring)."""

  def __init__(self, features: int):
    self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    var = jnp.mean(jnp.square(x - mean), axes)
    return (x - mean) * jax.lax.rsqrt(var + BN_EPS) * self.scale[...] + self.bias[...]


class CrossAttention(nnx.Module):
  """Multi-head cross-attention (`pos_attention`): queries from P', keys and values from X'.

  Head j owns channels [j*d, (j+1)*d) (contiguous blocks); logits scaled by d^-0.5 * softmax_scale.
  """

  def __init__(self, c_s: int, c_t: int, heads: int, softmax_scale: float, *, rngs: nnx.Rngs):
    self.heads, self.scale = heads, (c_t // heads) ** -0.5 * softmax_scale
    self.q = _linear(c_t, c_t, rngs)
    self.k = _linear(c_s, c_t, rngs)
    self.v = _linear(c_s, c_t, rngs)
    self.proj = _linear(c_t, c_t, rngs)

  def __call__(self, queries: jax.Array, keys: jax.Array) -> jax.Array:
    split = lambda t: t.reshape(*t.shape[:2], self.heads, -1).transpose(0, 2, 1, 3)
    out = layers.attention(split(self.q(queries)), split(self.k(keys)), split(self.v(keys)),
                           self.scale)
    b, _, n, _ = out.shape
    return self.proj(out.transpose(0, 2, 1, 3).reshape(b, n, -1))


class CAP(nnx.Module):
  """ScaleKD's `AttentionProjector`: student map (B, h, w, C_s) -> tokens (B, N_q, C_t).

  X' = ReLU(BN(conv3x3(x))) + pos_embed; P' = ReLU(proj_pos(P)) with P the given query tokens or the
  learned `query` (N_q = query_hw[0] * query_hw[1]); Y = LN(attn(P', X')); out = Y + FFN(Y) (ReLU).
  """

  def __init__(self, c_s: int, c_t: int, key_hw: tuple[int, int], heads: int,
               softmax_scale: float, query_hw: tuple[int, int] | None, *, rngs: nnx.Rngs):
    if c_t % heads:
      raise SetupError(f'ScaleKD: the projector width {c_t} (a teacher width) is not divisible by '
                       f'{heads} heads; set scalekd_heads to a divisor of {c_t}.')
    init3 = _torch_uniform(9 * c_s)
    self.proj_student = nnx.Conv(c_s, c_s, (3, 3), padding=((1, 1), (1, 1)), kernel_init=init3,
                                 bias_init=init3, rngs=rngs)
    self.proj_student_bn = BatchStatsNorm(c_s)
    # trunc_normal(std 0.02, bounds +-2): the absolute bounds are 100 std away, i.e. a plain normal.
    self.pos_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, *key_hw, c_s)))
    self.query_hw = tuple(query_hw) if query_hw else None
    self.query = (nnx.Param(jax.random.normal(rngs.params(), (query_hw[0] * query_hw[1], c_t)))
                  if query_hw else None)  # nn.Embedding: N(0, 1)
    self.proj_pos = _linear(c_t, c_t, rngs)  # 1x1 conv on the query map == Linear on its tokens.
    self.pos_attention = CrossAttention(c_s, c_t, heads, softmax_scale, rngs=rngs)
    self.norm = nnx.LayerNorm(c_t, epsilon=CAP_LN_EPS, rngs=rngs)
    self.fc1 = _linear(c_t, 4 * c_t, rngs)
    self.fc2 = _linear(4 * c_t, c_t, rngs)

  def __call__(self, x: jax.Array, queries: jax.Array | None = None) -> jax.Array:
    x = x.astype(jnp.float32)
    b = x.shape[0]
    if x.shape[1:3] != self.pos_embed.shape[1:3]:
      raise ValueError(f'CAP built for {self.pos_embed.shape[1:3]} maps, got {x.shape[1:3]}.')
    keys = jax.nn.relu(self.proj_student_bn(self.proj_student(x))) + self.pos_embed[...]
    if queries is None:
      if self.query is None:
        raise ValueError('This CAP has no learned queries: pass query tokens.')
      queries = jnp.broadcast_to(self.query[...], (b, *self.query.shape))
    p = jax.nn.relu(self.proj_pos(queries.astype(jnp.float32)))
    y = self.norm(self.pos_attention(p, keys.reshape(b, -1, keys.shape[-1])))
    return y + self.fc2(jax.nn.relu(self.fc1(y)))


class ScaleKDProjectors(nnx.Module):
  """The four CAPs: stage 3 (learned queries on the teacher's stage-3 grid) and stage 4 (queries =
  the stage-3 TPP outputs), one per view each (`projector_0` spatial, `projector_1` frequency)."""

  def __init__(self, s3: tuple[int, tuple[int, int]], s4: tuple[int, tuple[int, int]],
               t3: tuple[int, tuple[int, int]], t4: int, heads: Sequence[int],
               softmax_scale: Sequence[float], *, rngs: nnx.Rngs):
    (c3, hw3), (c4, hw4), (ct3, thw3) = s3, s4, t3
    for view in VIEWS:
      setattr(self, f's3_{view}', CAP(c3, ct3, hw3, heads[0], softmax_scale[0], thw3, rngs=rngs))
      setattr(self, f's4_{view}', CAP(c4, t4, hw4, heads[1], softmax_scale[1], None, rngs=rngs))


def _pair(cfg: ml_collections.ConfigDict, key: str) -> tuple[float, float]:
  value = tuple(cfg[key])
  if len(value) != 2:
    raise SetupError(f'{key}={cfg[key]!r} must be a pair (stage 3, stage 4) or (spatial, frequency).')
  return value


def build(cfg: ml_collections.ConfigDict, student_feats: dict[str, Any],
          teacher_feats: dict[str, Any], seed: int) -> ScaleKDProjectors:
  """The CAPs from NHWC feature shapes: student stage3/stage4, teacher stage3 (the tail's input) and
  stage4 (the final map's)."""
  for key in ('scalekd_alpha_s3', 'scalekd_alpha_s4'):
    _pair(cfg, key)
  heads, scale = _pair(cfg, 'scalekd_heads'), _pair(cfg, 'scalekd_softmax_scale')
  shape = lambda f: (int(f.shape[-1]), (int(f.shape[1]), int(f.shape[2])))
  return ScaleKDProjectors(
      shape(student_feats['stage3']), shape(student_feats['stage4']),
      shape(teacher_feats['stage3']), int(teacher_feats['stage4'].shape[-1]),
      tuple(int(h) for h in heads), tuple(float(s) for s in scale),
      rngs=nnx.Rngs(params=jax.random.fold_in(jax.random.key(seed), 0x5CA1E)))


def frozen(state: Any) -> Any:
  """`state` with stop_gradient on every float leaf (a teacher whose weights get no gradient)."""
  return jax.tree.map(lambda v: _sg(v) if jnp.issubdtype(v.dtype, jnp.inexact) else v, state)


def _tokens_to_map(tokens: jax.Array, like: jax.Array) -> jax.Array:
  return tokens.reshape(like.shape[0], *like.shape[1:3], tokens.shape[-1])


def feature_terms(s3: jax.Array, s4: jax.Array, t4: jax.Array, projector: ScaleKDProjectors,
                  tail: Any, alpha_s3: Sequence[float], alpha_s4: Sequence[float]
                  ) -> dict[str, jax.Array]:
  """The four weighted DFM terms {s3_spatial, s3_frequency, s4_spatial, s4_frequency}.

  `tail`: map -> map, the frozen teacher's last stage (TPP); its outputs are the stage-4 queries
  (not detached: the stage-4 terms also train the stage-3 CAPs and the student's stage 3).
  """
  b = s3.shape[0]
  both = jnp.concatenate([projector.s3_spatial(s3), projector.s3_frequency(s3)])  # one tail call
  q = tail(both.reshape(2 * b, *projector.s3_spatial.query_hw, both.shape[-1]))
  q_sp, q_fr = q[:b].astype(jnp.float32), q[b:].astype(jnp.float32)
  o_sp = projector.s4_spatial(s4, q_sp.reshape(b, -1, q_sp.shape[-1]))
  o_fr = projector.s4_frequency(s4, q_fr.reshape(b, -1, q_fr.shape[-1]))
  return {'s3_spatial': alpha_s3[0] * dfm_spatial(q_sp, t4),
          's3_frequency': alpha_s3[1] * dfm_frequency(q_fr, t4),
          's4_spatial': alpha_s4[0] * dfm_spatial(_tokens_to_map(o_sp, t4), t4),
          's4_frequency': alpha_s4[1] * dfm_frequency(_tokens_to_map(o_fr, t4), t4)}


def check_teacher(name: str, teacher: nnx.Module, cfg: ml_collections.ConfigDict) -> None:
  """SetupError unless `teacher` has a tail, and (in train mode) no BatchNorm the mode would switch."""
  if not (hasattr(teacher, 'tail') and hasattr(teacher, 'final_map')):
    raise SetupError(f'ScaleKD needs a teacher with a last-stage tail (Swin, ViT/DeiT, SLaK, '
                     f'ConvNeXt); {name!r} has none. Choose one of those teachers.')
  if cfg.scalekd_teacher_train_mode and any(
      isinstance(m, layers.BatchNorm) for _, m in nnx.iter_modules(teacher)):
    raise SetupError(f'scalekd_teacher_train_mode=True would also switch the BatchNorms of {name!r} '
                     'to batch statistics; it reproduces the official Swin teacher\'s drop path only. '
                     'Set it to False for this teacher.')


def loss(student_out: tuple[jax.Array, dict[str, jax.Array]],
         teacher_out: tuple[jax.Array, dict[str, jax.Array]], targets: jax.Array,
         projector: ScaleKDProjectors, cfg: ml_collections.ConfigDict, *, step: Any = None,
         teacher: nnx.Module | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The ScaleKD training loss (module docstring) and its terms; `teacher`: the frozen teacher module
  (weights under stop_gradient: `frozen`), whose `tail` is the TPP and `final_map` the target."""
  if teacher is None:
    raise ValueError('method scalekd needs the frozen teacher module (teacher=...).')
  (z_s, feats_s), (z_t, feats_t) = student_out, teacher_out
  t4 = _sg(teacher.final_map(feats_t)).astype(jnp.float32)
  train = bool(cfg.scalekd_teacher_train_mode)
  if train:  # fresh drop-path masks every step, from (seed, step) like the step's other randomness.
    nnx.reseed(teacher, dropout=jax.random.fold_in(jax.random.key(cfg.seed + 0x5CA1E),
                                                   0 if step is None else step))
  dtype = jnp.dtype(cfg.teacher.dtype)
  terms = feature_terms(feats_s['stage3'], feats_s['stage4'], t4, projector,
                        lambda x: teacher.tail(x.astype(dtype), train=train),
                        _pair(cfg, 'scalekd_alpha_s3'), _pair(cfg, 'scalekd_alpha_s4'))
  ce = losses.soft_cross_entropy(z_s, targets)
  metrics = {'ce': ce, **terms}
  total = sum(terms.values())
  alpha, t = cfg.scalekd_kd_alpha, cfg.scalekd_kd_temperature
  if alpha > 0:
    p_t = jax.nn.softmax(_sg(z_t).astype(jnp.float32) / t)
    kd = t * t * losses.soft_cross_entropy(z_s / t, p_t)
    metrics['kd'] = kd
    total = total + (1 - alpha) * ce + alpha * kd
  else:
    total = total + ce
  return total, metrics
