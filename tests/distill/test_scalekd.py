"""ScaleKD pieces against the official formulas (../shared/notes/scalekd-spec.md §3-§5), small shapes."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft
from flax import nnx

from configs import common
from lkd_jax.distill import scalekd
from lkd_jax.errors import SetupError

B = 3


def _rand(seed, shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _normalize_ref(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def test_dct_highpass_is_spatial_mean_removal():
  x = _rand(0, (B, 5, 5, 4)).astype(np.float64)
  # The official DCT: scipy's DCT-II, norm=None, over H and W; zero the (0, 0) coefficient; invert.
  coef = scipy.fft.dctn(x, type=2, axes=(1, 2), norm=None)
  coef[:, 0, 0, :] = 0
  want = scipy.fft.idctn(coef, type=2, axes=(1, 2), norm=None)
  np.testing.assert_allclose(scalekd.dct_highpass(jnp.asarray(x, jnp.float32)), want, atol=1e-5)


def test_dfm_terms_sum_over_chw_divided_by_the_batch():
  s, t = _rand(1, (B, 4, 4, 6)), _rand(2, (B, 4, 4, 6))
  s[0, 1, 2] = 0.0  # a zero vector: normalised to 0 (eps 1e-12 on the norm), not NaN
  want_sp = np.sum((_normalize_ref(s) - _normalize_ref(t)) ** 2) / B
  np.testing.assert_allclose(scalekd.dfm_spatial(s, t), want_sp, rtol=1e-5)
  hp = lambda z: z - z.mean(axis=(1, 2), keepdims=True)
  want_fr = np.sum((_normalize_ref(hp(s)) - _normalize_ref(hp(t))) ** 2) / B
  np.testing.assert_allclose(scalekd.dfm_frequency(s, t), want_fr, rtol=1e-5)
  g = jax.grad(scalekd.dfm_spatial)(jnp.asarray(s), jnp.asarray(t))
  assert np.all(np.isfinite(g))  # x / max(|x|, eps): finite (1/eps) at x = 0, as torch's


def _cap_ref(cap, x, queries=None):
  """The spec's CAP forward (§3) in float64 numpy from the module's parameters."""
  f = lambda v: np.asarray(v[...], np.float64)
  x = np.asarray(x, np.float64)
  b, h, w, cs = x.shape
  k3, b3 = f(cap.proj_student.kernel), f(cap.proj_student.bias)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = sum(np.einsum('bhwi,io->bhwo', xp[:, i:i + h, j:j + w], k3[i, j]) for i in range(3)
          for j in range(3)) + b3
  mean, var = y.mean((0, 1, 2)), y.var((0, 1, 2))
  y = (y - mean) / np.sqrt(var + 1e-5) * f(cap.proj_student_bn.scale) + f(cap.proj_student_bn.bias)
  keys = (np.maximum(y, 0) + f(cap.pos_embed)).reshape(b, h * w, cs)
  p = f(cap.query)[None].repeat(b, 0) if queries is None else np.asarray(queries, np.float64)
  lin = lambda m, z: z @ f(m.kernel) + f(m.bias)
  p = np.maximum(lin(cap.proj_pos, p), 0)
  att = cap.pos_attention
  q, k, v = lin(att.q, p), lin(att.k, keys), lin(att.v, keys)
  ct = q.shape[-1]
  d = ct // att.heads
  outs = []
  for j in range(att.heads):  # head j owns the contiguous channels [j*d, (j+1)*d)
    sl = slice(j * d, (j + 1) * d)
    logits = q[..., sl] @ k[..., sl].transpose(0, 2, 1) * d ** -0.5 * SOFTMAX_SCALE
    a = np.exp(logits - logits.max(-1, keepdims=True))
    outs.append((a / a.sum(-1, keepdims=True)) @ v[..., sl])
  o = lin(att.proj, np.concatenate(outs, -1))
  yn = (o - o.mean(-1, keepdims=True)) / np.sqrt(o.var(-1, keepdims=True) + 1e-5)
  yn = yn * f(cap.norm.scale) + f(cap.norm.bias)
  return yn + lin(cap.fc2, np.maximum(lin(cap.fc1, yn), 0))


SOFTMAX_SCALE = 5.0


@pytest.mark.parametrize('with_queries', [False, True])
def test_cap_matches_the_spec_forward(with_queries):
  cap = scalekd.CAP(6, 8, (3, 3), 4, SOFTMAX_SCALE, (2, 3), rngs=nnx.Rngs(0))
  assert cap.norm.epsilon == 1e-5  # torch LayerNorm's, not flax's 1e-6
  x = _rand(3, (B, 3, 3, 6))
  queries = _rand(4, (B, 5, 8)) if with_queries else None  # given queries take precedence
  out = cap(jnp.asarray(x), None if queries is None else jnp.asarray(queries))
  assert out.shape == (B, 5 if with_queries else 6, 8)
  np.testing.assert_allclose(out, _cap_ref(cap, x, queries), rtol=2e-4, atol=2e-4)


def test_cap_heads_must_divide_the_width():
  with pytest.raises(SetupError, match='divisible by 3 heads'):
    scalekd.CAP(6, 8, (3, 3), 3, 1.0, None, rngs=nnx.Rngs(0))


@functools.lru_cache(maxsize=None)
def _projector_split():
  # student s3 (4x4, 6 ch), s4 (2x2, 10 ch); teacher stage 3 (4x4, 8 ch), final width 12.
  return nnx.split(scalekd.ScaleKDProjectors((6, (4, 4)), (10, (2, 2)), (8, (4, 4)), 12, (2, 3),
                                             (5.0, 5.0), rngs=nnx.Rngs(0)))


def _tail(x):
  """A stand-in teacher tail: 2x2 merge, a fixed linear map 4*8 -> 12, tanh."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, -1)
  return jnp.tanh(x @ jnp.asarray(_rand(9, (4 * c, 12))) / 4)


def test_stage4_queries_carry_gradient_into_the_stage3_caps():
  graph, params = _projector_split()
  s3, s4, t4 = _rand(5, (B, 4, 4, 6)), _rand(6, (B, 2, 2, 10)), _rand(7, (B, 2, 2, 12))

  def stage4_only(params):
    terms = scalekd.feature_terms(s3, s4, t4, nnx.merge(graph, params), _tail, (0.0, 0.0),
                                  (0.08, 0.06))
    return terms['s4_spatial'] + terms['s4_frequency']

  grads = jax.jit(jax.grad(stage4_only))(params)
  for view in scalekd.VIEWS:
    g = grads[f's3_{view}']
    assert float(jnp.abs(g['query'][...]).max()) > 0, view
    assert float(jnp.abs(g['fc2']['kernel'][...]).max()) > 0, view


class _FakeTeacher:
  def final_map(self, feats):
    return feats['stage4']

  def tail(self, x, train=False):
    return _tail(x)


def test_loss_weights_kd_and_the_four_terms_as_the_official_code():
  cfg = common.base_config()
  cfg.update(scalekd_heads=(2, 3))
  z_s, z_t = _rand(10, (B, 5)), _rand(11, (B, 5))
  targets = np.eye(5, dtype=np.float32)[[0, 3, 1]]
  student = (jnp.asarray(z_s), {'stage3': _rand(5, (B, 4, 4, 6)), 'stage4': _rand(6, (B, 2, 2, 10))})
  teacher = (jnp.asarray(z_t), {'stage4': _rand(7, (B, 2, 2, 12))})
  graph, params = _projector_split()
  run = lambda cfg: jax.jit(lambda p, s, t: scalekd.loss(s, t, targets, nnx.merge(graph, p), cfg,
                                                         teacher=_FakeTeacher()))
  total, m = run(cfg)(params, student, teacher)
  log_s = z_s - np.log(np.exp(z_s).sum(-1, keepdims=True))
  p_t = np.exp(z_t) / np.exp(z_t).sum(-1, keepdims=True)
  ce = -np.mean(np.sum(targets * log_s, -1))
  kd = -np.mean(np.sum(p_t * log_s, -1))  # T = 1: cross-entropy, not KL (spec §5)
  np.testing.assert_allclose(m['kd'], kd, rtol=1e-5)
  feats = sum(float(m[f'{s}_{v}']) for s in scalekd.STAGES for v in scalekd.VIEWS)
  np.testing.assert_allclose(total, 0.5 * ce + 0.5 * kd + feats, rtol=1e-5)
  cfg.scalekd_kd_alpha = 0.0  # the Swin-S recipe: no KD, full CE
  total0, m0 = run(cfg)(params, student, teacher)
  assert 'kd' not in m0
  np.testing.assert_allclose(total0, ce + feats, rtol=1e-5)
