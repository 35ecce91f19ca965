"""Full-size key lists (../shared/refs/keys/*.txt): every key maps onto the Flax model with the right
shape, and the Flax parameter count equals the listing's `# params N`. Models are built abstractly."""
from __future__ import annotations

import functools
import json

import pytest
from flax import nnx

from lkd_jax.convert.families import rename_for
from lkd_jax.convert.readers import DROPPED_SUFFIXES
from lkd_jax.convert.refs import refs_dir
from lkd_jax.convert.rules import plan, variables_of
from lkd_jax.models import create
from lkd_jax.models.macs import count_params

KEYS = refs_dir() / 'keys'
MODEL_OF = {
    'SLaK_tiny': 'slak_t', 'SLaK_small': 'slak_s', 'SLaK_base': 'slak_b',
    'convnext_tiny': 'convnext_t', 'convnext_tiny_bn_student': 'convnext_t_bn',
    'convnext_small_bn_student': 'convnext_s_bn',
    'swin_tiny_patch4_window7_224': 'swin_t', 'swin_tiny_patch4_window7_224_timm1': 'swin_t',
    'vit_small_patch16_224_legacy_timm1': 'vit_s_legacy', 'vit_small_patch16_224_deit_timm': 'deit_s',
    'CSWin_64_12211_tiny_224': 'cswin_t', 'resnet50': 'resnet50', 'resnet50_timm1': 'resnet50',
    # ScaleKD's teachers and students (keys/scalekd/).
    'scalekd/swin_small_patch4_window7_224': 'swin_s', 'scalekd/swin_base_patch4_window7_224': 'swin_b',
    'scalekd/swin_large_patch4_window7_224': 'swin_l',
    'scalekd/swin_small_patch4_window7_224_timm1': 'swin_s',
    'scalekd/swin_base_patch4_window7_224_timm1': 'swin_b',
    'scalekd/swin_large_patch4_window7_224_timm1': 'swin_l',
    'scalekd/swin_small_patch4_window7_224_mmcls': 'swin_s',
    'scalekd/swin_base_patch4_window7_224_mmcls': 'swin_b',
    'scalekd/swin_large_patch4_window7_224_mmcls': 'swin_l',
    'scalekd/vit_base_patch16_224': 'vit_b', 'scalekd/deit_base_patch16_224': 'vit_b',
    'scalekd/vit_large_patch16_224': 'vit_l', 'scalekd/resnet50d': 'resnet50d',
}
# BEiT-L (per-block relative position bias, layer scale, mean pooling) has no port yet.
NOT_PORTED = ('scalekd/beit_large_patch16_224',)
LISTINGS = ([n for n in sorted(str(p.relative_to(KEYS))[:-4] for p in KEYS.glob('**/*.txt'))
             if n not in NOT_PORTED] if KEYS.is_dir() else
            [pytest.param(None, marks=pytest.mark.skip(reason=f'key listings not found at {KEYS}'))])


def read_listing(name: str) -> tuple[dict[str, tuple[int, ...]], int]:
  """{key: shape} (num_batches_tracked dropped, as the reader does) and the `# params N` count."""
  shapes, n_params = {}, None
  for line in (KEYS / f'{name}.txt').read_text().splitlines():
    if line.startswith('# params'):
      n_params = int(line.split()[-1])
    elif line.strip():
      key, shape, _ = line.split('\t')
      if not key.endswith(DROPPED_SUFFIXES):
        shapes[key] = tuple(json.loads(shape))
  return shapes, n_params


@functools.lru_cache(maxsize=None)
def _abstract_model(name: str):
  """Built once per model (several listings share one: the timm, official and mmcls layouts)."""
  return nnx.eval_shape(lambda: create(name, num_classes=1000))


@pytest.mark.parametrize('listing', LISTINGS)
def test_full_size_keys_convert(listing):
  assert listing in MODEL_OF, f'new listing {listing}.txt: add its model to MODEL_OF'
  model = _abstract_model(MODEL_OF[listing])
  source, n_params = read_listing(listing)
  target = {p: tuple(v.get_value().shape) for p, v in nnx.to_flat_state(variables_of(model))}
  mapping = plan(target, rename_for(type(model).__name__)(source))  # raises listing every problem.
  assert set(mapping.values()) == set(target)
  assert count_params(model) == n_params
