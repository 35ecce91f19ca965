"""Named distillation methods (config `method=`), composed from the pure pieces in losses.py.

A method's loss is `loss(student_out, teacher_out, targets, projector, cfg, *, step=None) -> (loss, metrics)`,
with `*_out = (logits, feats)`, `targets` the soft targets (mixup/cutmix + label smoothing),
`projector` the FD projectors (an NNX module) or None, and `step` the current train step (DKD warm-up).
Hyper-parameters are top-level config keys (configs/common.py, block "Distillation methods").

| method        | loss                                                       | source |
|---------------|------------------------------------------------------------|--------|
| ce            | CE(z_s, y)                                                 | timm SoftTargetCrossEntropy |
| kd            | (1-a) CE + a T^2 KL(p_t^T || p_s^T)                         | Hinton 2015; LK-KD engine_kd.py loss_kd (a=0.1, T=3) |
| nkd           | CE + target + g T^2 non-target (C-1 softmax)               | NKD, cls_KD nkd.py + distiller (T=1, g=1.5) |
| nkd_lkkd      | target + non-target at T=1, weight 1, NO CE                | LK-KD engine_kd.py NKDLoss() (faithful variant) |
| fd            | CE + w FD                                                  | Wei et al. 2022 FD; LK-KD engine_kd.py AMP branch |
| fd+kd         | kd + w FD                                                  | LK-KD `FD+KD` |
| fd+nkd        | nkd + w FD                                                 | corrected NKD + FD |
| fd+nkd_lkkd   | nkd_lkkd + w FD                                            | LK-KD `FD+NKD` (faithful) |
| dkd           | CE + min((step+1)/warmup, 1) (a TCKD + b NCKD)             | Zhao et al. 2022, mdistiller DKD.py (a=1, b=0.5, T=1) |
| dist          | CE + b inter + g intra (global-batch intra)                | Huang et al. 2022, hunto dist_kd.py (b=g=1, tau=1) |
| scalekd       | (1-a) CE + a T^2 CE(p_t, p_s) + DFM(CAP, TPP) at stages 3, 4 | Fan et al. 2024, deep-optimization/ScaleKD (scalekd.py) |

A method with `uses_teacher_tail` also gets `teacher=`, the frozen teacher module (scalekd's TPP).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from lkd_jax.distill import losses, projectors, scalekd

Out = tuple[jax.Array, dict[str, jax.Array]]
Metrics = dict[str, jax.Array]
LossFn = Callable[..., tuple[jax.Array, Metrics]]


class Method(NamedTuple):
  loss: LossFn
  needs_teacher: bool
  needs_projector: bool = False
  uses_teacher_tail: bool = False  # loss(..., teacher=frozen teacher module)


def ce(student_out: Out, teacher_out: Out | None, targets: jax.Array, projector: Any,
       cfg: ml_collections.ConfigDict, *, step: Any = None) -> tuple[jax.Array, Metrics]:
  """Supervised training: soft-target cross-entropy only."""
  loss = losses.soft_cross_entropy(student_out[0], targets)
  return loss, {'ce': loss}


def kd(student_out: Out, teacher_out: Out, targets: jax.Array, projector: Any,
       cfg: ml_collections.ConfigDict, *, step: Any = None) -> tuple[jax.Array, Metrics]:
  """(1-alpha) CE + alpha T^2 KL(p_t^T || p_s^T) (Hinton 2015; paper code: alpha 0.1, T 3)."""
  alpha, t = cfg.kd_alpha, cfg.kd_temperature
  ce_loss = losses.soft_cross_entropy(student_out[0], targets)
  kd_loss = losses.kd_kl(student_out[0], teacher_out[0], t)
  return (1 - alpha) * ce_loss + alpha * kd_loss, {'ce': ce_loss, 'kd': kd_loss}


def nkd(student_out: Out, teacher_out: Out, targets: jax.Array, projector: Any,
        cfg: ml_collections.ConfigDict, *, step: Any = None) -> tuple[jax.Array, Metrics]:
  """Official NKD: CE + target term + gamma T^2 non-target term (cls_KD nkd.py; T=1, gamma=1.5).

  The NKD target is argmax of the (mixed) soft target; the CE uses the soft target itself.
  """
  ce_loss = losses.soft_cross_entropy(student_out[0], targets)
  tgt, non = losses.nkd_terms(student_out[0], teacher_out[0], losses.target_index(targets),
                              cfg.nkd_temperature)
  loss = ce_loss + tgt + cfg.nkd_gamma * non
  return loss, {'ce': ce_loss, 'nkd_target': tgt, 'nkd_non_target': non}


def nkd_lkkd(student_out: Out, teacher_out: Out, targets: jax.Array, projector: Any,
             cfg: ml_collections.ConfigDict, *, step: Any = None) -> tuple[jax.Array, Metrics]:
  """The paper's released NKD (LK-KD engine_kd.py `NKDLoss()`): temperature 1 and weight 1 whatever
  the config says, and it REPLACES the CE (no separate label term). Faithful in value; computed
  stably with log-softmax (the release takes log(softmax) after a -1000 target mask) and with the
  teacher detached (the release backpropagates into the unoptimised teacher: no effect on the student)."""
  tgt, non = losses.nkd_terms(student_out[0], teacher_out[0], losses.target_index(targets), 1.0)
  return tgt + non, {'nkd_target': tgt, 'nkd_non_target': non}


def fd_term(student_out: Out, teacher_out: Out, projector: Any, cfg: ml_collections.ConfigDict
            ) -> tuple[jax.Array, Metrics]:
  """Sum over the configured stages of FD(proj_s(F_s), LN_noaffine(F_t)) (one projector per stage)."""
  projected = projector(student_out[1])
  total, metrics = 0.0, {}
  for stage, pred in projected.items():
    d = losses.feature_distance(pred, teacher_out[1][stage], cfg.fd_loss, cfg.fd_beta)
    metrics[f'fd_{stage}'] = d
    total = total + d
  return total, metrics


def _with_fd(base: LossFn) -> LossFn:
  def loss(student_out: Out, teacher_out: Out, targets: jax.Array, projector: Any,
           cfg: ml_collections.ConfigDict, *, step: Any = None) -> tuple[jax.Array, Metrics]:
    base_loss, metrics = base(student_out, teacher_out, targets, projector, cfg, step=step)
    fd_loss, fd_metrics = fd_term(student_out, teacher_out, projector, cfg)
    return base_loss + cfg.fd_weight * fd_loss, dict(metrics, **fd_metrics, fd=fd_loss)
  loss.__name__ = f'fd+{base.__name__}'
  loss.__doc__ = f'{base.__name__} + fd_weight * FD over fd_stages (LK-KD: lr_fd * D).'
  return loss


def dkd_warmup(step: Any, warmup_steps: int) -> jax.Array:
  """min((step+1)/warmup, 1): mdistiller's min(epoch/warmup, 1) with its 1-based epoch, in steps.
  warmup_steps <= 0 gives 1 from the first step (mdistiller ImageNet: WARMUP 1 epoch == no ramp)."""
  if warmup_steps <= 0 or step is None:
    return jnp.ones((), jnp.float32)
  return jnp.minimum((jnp.asarray(step, jnp.float32) + 1.0) / warmup_steps, 1.0)


def dkd(student_out: Out, teacher_out: Out, targets: jax.Array, projector: Any,
        cfg: ml_collections.ConfigDict, *, step: Any = None) -> tuple[jax.Array, Metrics]:
  """CE + warm-up * (alpha TCKD + beta NCKD) (mdistiller DKD.py; ImageNet alpha 1, beta 0.5, T 1).
  Under mixup the DKD target is argmax of the mixed target (mdistiller has no mixup, issue #13)."""
  ce_loss = losses.soft_cross_entropy(student_out[0], targets)
  tckd, nckd = losses.dkd_terms(student_out[0], teacher_out[0], losses.target_index(targets),
                                cfg.dkd_temperature)
  w = dkd_warmup(step, cfg.dkd_warmup_steps)
  loss = ce_loss + w * (cfg.dkd_alpha * tckd + cfg.dkd_beta * nckd)
  return loss, {'ce': ce_loss, 'tckd': tckd, 'nckd': nckd, 'dkd_warmup': w}


def dist(student_out: Out, teacher_out: Out, targets: jax.Array, projector: Any,
         cfg: ml_collections.ConfigDict, *, step: Any = None) -> tuple[jax.Array, Metrics]:
  """CE + beta inter + gamma intra (DIST; hunto dist_kd.py, beta=gamma=1, tau=1).
  The intra-class term correlates each class column over the GLOBAL batch (the jitted mean over a
  batch-sharded axis is global), so it is independent of the device count for a fixed global batch."""
  ce_loss = losses.soft_cross_entropy(student_out[0], targets)
  inter, intra = losses.dist_terms(student_out[0], teacher_out[0], cfg.dist_tau)
  loss = ce_loss + cfg.dist_beta * inter + cfg.dist_gamma * intra
  return loss, {'ce': ce_loss, 'dist_inter': inter, 'dist_intra': intra}


METHODS: dict[str, Method] = {
    'ce': Method(ce, needs_teacher=False),
    'kd': Method(kd, needs_teacher=True),
    'nkd': Method(nkd, needs_teacher=True),
    'nkd_lkkd': Method(nkd_lkkd, needs_teacher=True),
    'fd': Method(_with_fd(ce), needs_teacher=True, needs_projector=True),
    'fd+kd': Method(_with_fd(kd), needs_teacher=True, needs_projector=True),
    'fd+nkd': Method(_with_fd(nkd), needs_teacher=True, needs_projector=True),
    'fd+nkd_lkkd': Method(_with_fd(nkd_lkkd), needs_teacher=True, needs_projector=True),
    'dkd': Method(dkd, needs_teacher=True),
    'dist': Method(dist, needs_teacher=True),
    'scalekd': Method(scalekd.loss, needs_teacher=True, needs_projector=True,
                      uses_teacher_tail=True),
}


def get(name: str) -> Method:
  """The method registered under `name`; a ValueError lists the known ones otherwise."""
  if name not in METHODS:
    raise ValueError(f'Unknown method {name!r}. Known methods: {", ".join(sorted(METHODS))}.')
  return METHODS[name]


def build_projector(cfg: ml_collections.ConfigDict, student_feats: dict[str, Any] | None,
                    teacher_feats: dict[str, Any] | None, seed: int) -> Any:
  """The method's projectors from feature shapes (FD: one 1x1 per `cfg.fd_stages` stage; scalekd:
  its four CAPs); None for methods without one."""
  method = get(cfg.method)
  if not method.needs_projector:
    return None
  if student_feats is None or teacher_feats is None:
    raise ValueError(f'Method {cfg.method!r} needs student and teacher feature shapes.')
  if method.uses_teacher_tail:
    return scalekd.build(cfg, student_feats, teacher_feats, seed)
  return projectors.build(projectors.parse_stages(cfg.fd_stages), student_feats, teacher_feats,
                          seed)


export_student = projectors.export_student
