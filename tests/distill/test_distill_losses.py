"""Each distillation loss against a closed form or a naive per-example numpy version written from the formula."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import common
from lkd_jax import sharding
from lkd_jax.distill import losses, methods

N, C = 8, 10


def _logits(seed, n=N, c=C, scale=2.0):
  return np.random.default_rng(seed).normal(size=(n, c)).astype(np.float32) * scale


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _targets(labels, c=C, smoothing=0.1):
  return np.eye(c, dtype=np.float32)[labels] * (1 - smoothing) + smoothing / c


def _cfg(**kw):
  c = common.base_config()
  c.update(kw)
  return c


# ---------------------------------------------------------------- KD

def test_kd_identical_logits_leaves_only_ce():
  z, y = _logits(0), _targets(np.arange(N) % C)
  cfg = _cfg(kd_alpha=0.3, kd_temperature=4.0)
  loss, m = methods.kd((jnp.asarray(z), {}), (jnp.asarray(z), {}), jnp.asarray(y), None, cfg)
  ce = -np.mean(np.sum(y * np.log(_softmax(z)), -1))
  np.testing.assert_allclose(float(m['kd']), 0.0, atol=1e-6)
  np.testing.assert_allclose(float(loss), 0.7 * ce, rtol=1e-5)


@pytest.mark.parametrize('t', [1.0, 3.0, 8.0])
def test_kd_kl_value_and_t_squared_gradient(t):
  zs, zt = _logits(1), _logits(2)
  ps, pt = _softmax(zs / t), _softmax(zt / t)
  naive = t * t * np.mean([np.sum(pt[n] * (np.log(pt[n]) - np.log(ps[n]))) for n in range(N)])
  np.testing.assert_allclose(float(losses.kd_kl(zs, zt, t)), naive, rtol=1e-5)
  # d/dz_s [T^2 KL] = T (p_s^T - p_t^T) / N: the T^2 factor keeps the gradient O(1/T) * T^2 = O(T).
  g = jax.grad(losses.kd_kl)(jnp.asarray(zs), jnp.asarray(zt), t)
  np.testing.assert_allclose(np.asarray(g), t * (ps - pt) / N, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- NKD

def _nkd_naive(zs, zt, labels, temp):
  """Per example: delete the target column, softmax over the C-1 rest (cls_KD nkd.py)."""
  tgt, non = [], []
  for n, t in enumerate(labels):
    s1, t1 = _softmax(zs[n]), _softmax(zt[n])
    tgt.append(-t1[t] * np.log(s1[t]))
    keep = np.arange(zs.shape[1]) != t
    s_hat, t_hat = _softmax(zs[n, keep] / temp), _softmax(zt[n, keep] / temp)
    non.append(-temp ** 2 * np.sum(t_hat * np.log(s_hat)))
  return np.mean(tgt), np.mean(non)


@pytest.mark.parametrize('temp', [1.0, 2.0])
def test_nkd_terms_match_naive_non_target_renormalisation(temp):
  zs, zt, labels = _logits(3), _logits(4), np.arange(N) % C
  tgt, non = losses.nkd_terms(zs, zt, jnp.asarray(labels), temp)
  ref_t, ref_n = _nkd_naive(zs, zt, labels, temp)
  np.testing.assert_allclose(float(tgt), ref_t, rtol=1e-5)
  np.testing.assert_allclose(float(non), ref_n, rtol=1e-5)
  # Renormalised over non-target classes: the target logits do not enter the non-target term.
  zs2, zt2 = zs.copy(), zt.copy()
  zs2[np.arange(N), labels] += 7.0
  zt2[np.arange(N), labels] -= 5.0
  np.testing.assert_allclose(float(losses.nkd_terms(zs2, zt2, jnp.asarray(labels), temp)[1]),
                             ref_n, rtol=1e-5)


def test_nkd_method_uses_argmax_of_mixed_target_and_gamma():
  zs, zt = _logits(5), _logits(6)
  a, b = np.arange(N) % C, (np.arange(N) + 3) % C
  y = 0.7 * _targets(a) + 0.3 * _targets(b)  # mixed target; argmax = a
  cfg = _cfg(nkd_gamma=1.5, nkd_temperature=1.0)
  loss, m = methods.nkd((zs, {}), (zt, {}), jnp.asarray(y), None, cfg)
  ref_t, ref_n = _nkd_naive(zs, zt, a, 1.0)
  ce = -np.mean(np.sum(y * np.log(_softmax(zs)), -1))
  np.testing.assert_allclose(float(loss), ce + ref_t + 1.5 * ref_n, rtol=1e-5)


def _nkd_lkkd_release(zs, zt, labels):
  """LK-KD engine_kd.py NKDLoss as released: log(softmax), -1000 target mask, /(1 - T_t), temp 1, weight 1."""
  s, t = _softmax(zs), _softmax(zt)
  idx = np.arange(len(labels))
  soft = -np.mean(t[idx, labels] * np.log(s[idx, labels]))
  mask = np.eye(zs.shape[1])[labels]
  ti, si = _softmax(zt - 1000 * mask), _softmax(zs - 1000 * mask)
  np_t = ti / (1 - ti[idx, labels])[:, None]
  np_s = si / (1 - si[idx, labels])[:, None]
  same = ti == ti[idx, labels][:, None]
  np_t[same], np_s[same] = 0, 1
  return soft - np.mean(np.sum(np_t * np.log(np_s), -1))


def test_nkd_lkkd_matches_release_and_is_stable():
  zs, zt, labels = _logits(7).astype(np.float64), _logits(8).astype(np.float64), np.arange(N) % C
  loss, m = methods.nkd_lkkd((jnp.asarray(zs, jnp.float32), {}), (jnp.asarray(zt, jnp.float32), {}),
                             jnp.asarray(_targets(labels)), None, _cfg(nkd_gamma=9.0))
  assert 'ce' not in m  # replaces CE; ignores nkd_gamma/nkd_temperature
  np.testing.assert_allclose(float(loss), _nkd_lkkd_release(zs, zt, labels), rtol=1e-5)
  big = jnp.asarray(_logits(9, scale=300.0))
  g = jax.grad(lambda z: methods.nkd_lkkd((z, {}), (big[::-1], {}), jnp.asarray(_targets(labels)),
                                          None, _cfg())[0])(big)
  assert np.all(np.isfinite(np.asarray(g)))


# ---------------------------------------------------------------- DKD

def _dkd_naive(zs, zt, labels, t):
  tck, nck = [], []
  for n, y in enumerate(labels):
    ps, pt = _softmax(zs[n] / t), _softmax(zt[n] / t)
    bs, bt = np.array([ps[y], 1 - ps[y]]), np.array([pt[y], 1 - pt[y]])
    tck.append(np.sum(bt * np.log(bt / bs)))
    keep = np.arange(len(ps)) != y
    hs, ht = _softmax(zs[n, keep] / t), _softmax(zt[n, keep] / t)
    nck.append(np.sum(ht * np.log(ht / hs)))
  return t * t * np.mean(tck), t * t * np.mean(nck)


@pytest.mark.parametrize('t', [1.0, 4.0])
def test_dkd_terms_match_naive(t):
  zs, zt, labels = _logits(10), _logits(11), np.arange(N) % C
  tckd, nckd = losses.dkd_terms(zs, zt, jnp.asarray(labels), t)
  ref = _dkd_naive(zs.astype(np.float64), zt.astype(np.float64), labels, t)
  np.testing.assert_allclose([float(tckd), float(nckd)], ref, rtol=1e-4)


def test_dkd_warmup_and_weights():
  zs, zt, labels = _logits(12), _logits(13), np.arange(N) % C
  y = jnp.asarray(_targets(labels))
  cfg = _cfg(dkd_alpha=1.0, dkd_beta=0.5, dkd_temperature=1.0, dkd_warmup_steps=10)
  ce = -np.mean(np.sum(np.asarray(y) * np.log(_softmax(zs)), -1))
  tckd, nckd = _dkd_naive(zs.astype(np.float64), zt.astype(np.float64), labels, 1.0)
  for step, w in [(0, 0.1), (4, 0.5), (9, 1.0), (100, 1.0)]:
    loss, m = methods.dkd((zs, {}), (zt, {}), y, None, cfg, step=jnp.int32(step))
    np.testing.assert_allclose(float(loss), ce + w * (tckd + 0.5 * nckd), rtol=1e-5)
  cfg.dkd_warmup_steps = 0
  assert float(methods.dkd((zs, {}), (zt, {}), y, None, cfg, step=jnp.int32(0))[1]['dkd_warmup']) == 1


# ---------------------------------------------------------------- DIST

def _pearson(a, b):
  a, b = a - a.mean(), b - b.mean()
  return np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-8)


def _dist_naive(zs, zt, tau=1.0):
  ys, yt = _softmax(zs / tau), _softmax(zt / tau)
  inter = 1 - np.mean([_pearson(ys[n], yt[n]) for n in range(len(ys))])
  intra = 1 - np.mean([_pearson(ys[:, c], yt[:, c]) for c in range(ys.shape[1])])
  return tau ** 2 * inter, tau ** 2 * intra


def test_dist_terms_match_naive():
  zs, zt = _logits(14), _logits(15)
  for tau in (1.0, 2.0):
    got = losses.dist_terms(zs, zt, tau)
    np.testing.assert_allclose([float(g) for g in got], _dist_naive(zs, zt, tau), rtol=1e-5)


def test_dist_intra_uses_global_batch_under_eight_device_sharding():
  mesh = sharding.make_mesh()
  assert mesh.devices.size == 8
  n = 32  # 4 examples per device
  zs, zt = _logits(16, n=n), _logits(17, n=n)
  bsh = NamedSharding(mesh, P(sharding.DATA))
  fn = jax.jit(lambda a, b: losses.dist_terms(a, b, 1.0), in_shardings=(bsh, bsh))
  inter, intra = fn(jax.device_put(zs, bsh), jax.device_put(zt, bsh))
  ref_inter, ref_intra = _dist_naive(zs, zt)
  np.testing.assert_allclose(float(intra), ref_intra, rtol=1e-5)
  np.testing.assert_allclose(float(inter), ref_inter, rtol=1e-5)
  per_shard = np.mean([_dist_naive(zs[i:i + 4], zt[i:i + 4])[1] for i in range(0, n, 4)])
  assert abs(per_shard - ref_intra) > 1e-2, 'per-device intra term should differ from the global one'


# ---------------------------------------------------------------- FD

def test_fd_zero_when_projected_student_equals_normalised_teacher():
  r = np.random.default_rng(18)
  teacher = r.normal(size=(2, 3, 3, 6)).astype(np.float32) * 3 + 1
  mu, var = teacher.mean(-1, keepdims=True), teacher.var(-1, keepdims=True)
  normed = (teacher - mu) / np.sqrt(var + 1e-5)
  for kind in ('smooth_l1', 'mse'):
    assert float(losses.feature_distance(normed, teacher, kind)) < 1e-10
    assert float(losses.feature_distance(normed + 0.5, teacher, kind)) > 1e-3
  # Through the method: identity projector, student map = LN(teacher map) -> FD term is 0.
  cfg = _cfg(method='fd', fd_stages='stage4')
  proj = methods.build_projector(cfg, {'stage4': normed}, {'stage4': teacher}, 0)
  proj.stage4.proj.kernel[...] = jnp.eye(6)
  proj.stage4.proj.bias[...] = jnp.zeros(6)
  z = _logits(19, n=2)
  _, m = methods.get('fd').loss((z, {'stage4': normed}), (z, {'stage4': teacher}),
                                jnp.asarray(_targets(np.arange(2))), proj, cfg)
  assert float(m['fd']) < 1e-10


def test_smooth_l1_closed_form_beta_two():
  d = np.array([-5.0, -2.0, -1.0, 0.0, 0.5, 1.9, 3.0], np.float32)
  ref = np.where(np.abs(d) < 2, 0.5 * d ** 2 / 2, np.abs(d) - 1)
  np.testing.assert_allclose(float(losses.smooth_l1(d, np.zeros_like(d), 2.0)), ref.mean(), rtol=1e-6)


def test_fd_spatial_rule_resizes_student_to_teacher_grid():
  # CNN 7x7 student vs ViT 14x14 teacher (and the reverse): the student map is resized.
  r = np.random.default_rng(20)
  teacher14 = r.normal(size=(2, 14, 14, 4)).astype(np.float32)
  const = np.broadcast_to(np.arange(4, dtype=np.float32), (2, 7, 7, 4))
  up = losses.match_spatial(const, (14, 14))
  assert up.shape == (2, 14, 14, 4)
  np.testing.assert_allclose(np.asarray(up), np.broadcast_to(np.arange(4.0), (2, 14, 14, 4)), atol=1e-5)
  assert losses.match_spatial(teacher14, (7, 7)).shape == (2, 7, 7, 4)
  assert np.isfinite(float(losses.feature_distance(const, teacher14)))
  # Multi-stage FD: one projector per stage, terms summed.
  cfg = _cfg(method='fd', fd_stages='stage3+stage4', fd_weight=2.0)
  sf = {'stage3': r.normal(size=(2, 14, 14, 3)), 'stage4': r.normal(size=(2, 7, 7, 5))}
  tf = {'stage3': r.normal(size=(2, 28, 28, 4)), 'stage4': teacher14}
  sf = {k: jnp.asarray(v, jnp.float32) for k, v in sf.items()}
  tf = {k: jnp.asarray(v, jnp.float32) for k, v in tf.items()}
  proj = methods.build_projector(cfg, sf, tf, 0)
  assert proj.stage3.proj.kernel[...].shape == (3, 4)
  assert proj.stage4.proj.kernel[...].shape == (5, 4)
  z = _logits(21, n=2)
  y = jnp.asarray(_targets(np.arange(2)))
  loss, m = methods.get('fd').loss((z, sf), (z, tf), y, proj, cfg)
  np.testing.assert_allclose(float(m['fd']), float(m['fd_stage3'] + m['fd_stage4']), rtol=1e-6)
  np.testing.assert_allclose(float(loss), float(m['ce'] + 2.0 * m['fd']), rtol=1e-6)


# ---------------------------------------------------------------- all methods

class _TinyTeacher:
  """What scalekd's TPP needs of a teacher: its final map and a tail (2x2 merge, fixed linear, tanh)."""

  def final_map(self, feats):
    return feats['stage4']

  def tail(self, x, train=False):
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, -1)
    return jnp.tanh(x @ jnp.asarray(np.random.default_rng(25).normal(size=(4 * c, 6)), jnp.float32))


@pytest.mark.parametrize('name', sorted(methods.METHODS))
def test_no_gradient_reaches_teacher_outputs(name):
  r = np.random.default_rng(22)
  zs, zt = jnp.asarray(_logits(23)), jnp.asarray(_logits(24))
  feats = lambda c3, c4: {'stage3': jnp.asarray(r.normal(size=(N, 4, 4, c3)), jnp.float32),
                          'stage4': jnp.asarray(r.normal(size=(N, 2, 2, c4)), jnp.float32)}
  fs, ft = feats(4, 5), feats(4, 6)
  y = jnp.asarray(_targets(np.arange(N) % C))
  cfg = _cfg(method=name, dkd_warmup_steps=4, scalekd_heads=(2, 3))
  proj = methods.build_projector(cfg, fs, ft, 0)
  method = methods.get(name)
  extra = {'teacher': _TinyTeacher()} if method.uses_teacher_tail else {}

  def f(s_out, t_out):
    return method.loss(s_out, t_out, y, proj, cfg, step=jnp.int32(1), **extra)[0]

  g_s, g_t = jax.grad(f, argnums=(0, 1))((zs, fs), (zt, ft))
  for leaf in jax.tree.leaves(g_t):
    assert not np.any(np.asarray(leaf)), f'{name}: gradient reached the teacher'
  assert np.any(np.asarray(g_s[0])), f'{name}: no gradient on the student logits'
  if method.needs_projector:
    assert np.any(np.asarray(g_s[1]['stage4']))
  assert np.isfinite(float(f((zs, fs), (zt, ft))))


def test_unknown_method_and_bad_stage_raise():
  with pytest.raises(ValueError, match='Known methods'):
    methods.get('nope')
  fs = {'stage4': jnp.zeros((1, 2, 2, 3))}
  with pytest.raises(ValueError, match='fd_stages'):
    methods.build_projector(_cfg(method='fd', fd_stages='stage9'), fs, fs, 0)
  assert methods.build_projector(_cfg(method='kd'), fs, fs, 0) is None
