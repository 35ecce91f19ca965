"""Per-family key renames applied before the generic rule (one mapping per family)."""
from __future__ import annotations

import re
from typing import Callable, Mapping, TypeVar

V = TypeVar('V')


def swin_timm1_to_timm(sd: Mapping[str, V]) -> dict[str, V]:
  """Official Microsoft / timm1 Swin -> timm >= 0.9 layout (timm's checkpoint_filter_fn).

  Drops `relative_position_index` / `attn_mask` buffers, moves `layers.i.downsample` to
  `layers.(i+1).downsample` and renames `head.*` to `head.fc.*`. A timm-layout dict passes unchanged.
  """
  timm1 = any(k.startswith('layers.0.downsample.') for k in sd)
  out = {}
  for k, v in sd.items():
    if k.endswith(('relative_position_index', 'attn_mask')):
      continue
    if timm1:
      k = re.sub(r'^layers\.(\d+)\.downsample\.',
                 lambda m: f'layers.{int(m.group(1)) + 1}.downsample.', k)
    if k in ('head.weight', 'head.bias'):
      k = 'head.fc.' + k.split('.')[-1]
    out[k] = v
  return out


def identity(sd: Mapping[str, V]) -> dict[str, V]:
  """Families whose checkpoints already use the module names of the port."""
  return dict(sd)


# Model class name -> rename. Classes not listed use `identity`.
RENAMES: dict[str, Callable[[Mapping[str, V]], dict[str, V]]] = {
    'SwinTransformer': swin_timm1_to_timm,
}


def rename_for(model_class: str) -> Callable[[Mapping[str, V]], dict[str, V]]:
  """The key rename of the family of `model_class`."""
  return RENAMES.get(model_class, identity)
