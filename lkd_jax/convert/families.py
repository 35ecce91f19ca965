"""Per-family key renames applied before the generic rule (one mapping per family)."""
from __future__ import annotations

import re
from typing import Callable, Mapping, TypeVar

V = TypeVar('V')


def swin_timm1_to_timm(sd: Mapping[str, V]) -> dict[str, V]:
  """Official Microsoft / timm1 (or mmcls: `swin_mmcls_to_timm1` first) Swin -> timm >= 0.9 layout
  (timm's checkpoint_filter_fn).

  Drops `relative_position_index` / `attn_mask` buffers, moves `layers.i.downsample` to
  `layers.(i+1).downsample` and renames `head.*` to `head.fc.*`. A timm-layout dict passes unchanged.
  """
  if any('.w_msa.' in k for k in sd):
    sd = swin_mmcls_to_timm1(sd)
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


# mmcls (ScaleKD's teacher checkpoints) -> official Swin names, applied before the timm1 rename.
_MMCLS_SWIN = ((r'^patch_embed\.projection\.', 'patch_embed.proj.'),
               (r'^stages\.(\d+)\.', r'layers.\1.'),
               (r'\.attn\.w_msa\.', '.attn.'),
               (r'\.ffn\.layers\.0\.0\.', '.mlp.fc1.'),
               (r'\.ffn\.layers\.1\.', '.mlp.fc2.'),
               (r'^norm3?\.', 'norm.'))


def unfold_to_block_order(w: V) -> V:
  """mmcv PatchMerging's 4C axis (last), in nn.Unfold order c*4 + kh*2 + kw, to the official
  block order k*C + c with blocks (0,0), (1,0), (0,1), (1,1) (spec: keys/scalekd README).
  Shapes (anything without .reshape) pass unchanged."""
  if not hasattr(w, 'reshape'):
    return w
  c = w.shape[-1] // 4
  blocks = w.reshape(*w.shape[:-1], c, 4)[..., [0, 2, 1, 3]]  # (.., c, kh*2+kw) -> block order
  return blocks.swapaxes(-1, -2).reshape(w.shape)


def swin_mmcls_to_timm1(sd: Mapping[str, V]) -> dict[str, V]:
  """mmcls Swin (`backbone.stages.i...`, ScaleKD's teachers; a distiller's `teacher.` entries) ->
  the official layout: renames, and the patch-merging 4C axis to the official channel order."""
  if any(k.startswith('teacher.') for k in sd):
    sd = {k[len('teacher.'):]: v for k, v in sd.items() if k.startswith('teacher.')}
  out = {}
  for k, v in sd.items():
    k = k[len('backbone.'):] if k.startswith('backbone.') else k
    for pattern, repl in _MMCLS_SWIN:
      k = re.sub(pattern, repl, k)
    if '.downsample.' in k and k.endswith(('norm.weight', 'norm.bias', 'reduction.weight')):
      v = unfold_to_block_order(v)
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
