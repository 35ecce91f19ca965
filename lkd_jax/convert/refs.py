"""The reference test vectors (`../shared/refs`, DESIGN §4): where they are and the model each one describes."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flax import nnx

from lkd_jax.kernels import Kernels

REPO_ROOT = Path(__file__).resolve().parents[2]


def refs_dir() -> Path:
  """$LKD_REFS_DIR when set, else ../shared/refs next to the repository root."""
  env = os.environ.get('LKD_REFS_DIR')
  return Path(env) if env else (REPO_ROOT / '..' / 'shared' / 'refs').resolve()


def model_from_ref(meta: dict[str, Any], seed: int = 0, kernels: Kernels = Kernels()) -> nnx.Module:
  """Builds the Flax model matching a reference json's `model_kind` and `constructor_args`,
  computing with `kernels`."""
  from lkd_jax.models.convnext import ConvNeXt
  from lkd_jax.models.cswin import CSWinTransformer
  from lkd_jax.models.resnet import Bottleneck, ResNet
  from lkd_jax.models.slak import SLaK
  from lkd_jax.models.swin import SwinTransformer
  from lkd_jax.models.vit import VisionTransformer
  a = dict(meta['constructor_args'], kernels=kernels)
  rngs = nnx.Rngs(params=seed, dropout=seed + 1)
  kind = meta['model_kind']
  if kind == 'slak':
    if not a.pop('bn'):
      raise NotImplementedError('SLaK without BatchNorm (bn=False) is not ported.')
    return SLaK(decom=a.pop('Decom'), rngs=rngs, **a)
  if kind == 'convnext':
    return ConvNeXt(rngs=rngs, **a)
  if kind == 'resnet':  # timm resnet50 overrides; stem_width only sizes timm's deep stems.
    return ResNet(num_classes=a['num_classes'], block=Bottleneck, layers_per_stage=a['layers'],
                  channels=a['channels'], kernels=kernels, rngs=rngs)
  if kind in ('swin', 'swin_timm1'):
    return SwinTransformer(rngs=rngs, **a)
  if kind == 'vit_legacy':
    return VisionTransformer(ln_eps=1e-5, rngs=rngs, **a)
  if kind == 'deit':
    return VisionTransformer(rngs=rngs, **a)
  if kind == 'cswin':
    return CSWinTransformer(rngs=rngs, **a)
  raise ValueError(f'Unknown reference model kind {kind!r}.')


def load_meta(name: str) -> dict[str, Any]:
  """The json next to `<name>.npz`."""
  return json.loads((refs_dir() / f'{name}.json').read_text())
