"""Checkpoint readers: .pth (needs torch, the optional extra), .npz and .safetensors (no torch)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

import numpy as np

# Official containers, in the order the paper's scripts read them (SLaK/ConvNeXt: 'model';
# CSWin: 'state_dict_ema'); `key=` picks one explicitly.
CONTAINER_KEYS = ('model', 'state_dict_ema', 'state_dict', 'model_ema')
DROPPED_SUFFIXES = ('num_batches_tracked',)


def _read_pth(path: Path, allow_pickle: bool) -> Mapping[str, Any]:
  try:
    import torch
  except ImportError as e:  # pragma: no cover - depends on the environment.
    raise ImportError('Reading .pth needs torch: pip install "lkd_jax[torch]", or convert the '
                      'checkpoint to .npz/.safetensors elsewhere.') from e
  torch.serialization.add_safe_globals([argparse.Namespace])  # SLaK/ConvNeXt save their args.
  try:
    return torch.load(path, map_location='cpu', weights_only=not allow_pickle)
  except Exception as e:  # torch raises UnpicklingError subclasses that vary by version.
    if allow_pickle:
      raise
    raise ValueError(f'{path}: torch.load(weights_only=True) refused it ({e}). If you trust the '
                     'file, pass allow_pickle=True (CLI: --allow_pickle).') from e


def _to_numpy(value: Any) -> Any:
  if hasattr(value, 'detach'):  # torch.Tensor
    return value.detach().cpu().float().numpy() if value.is_floating_point() else value.numpy()
  return value


def read_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> Mapping[str, Any]:
  """Reads a raw checkpoint object (a possibly nested mapping) from .pth/.pt/.bin, .npz or .safetensors."""
  path = Path(path)
  suffix = path.suffix.lower()
  if suffix == '.npz':
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  if suffix == '.safetensors':
    from safetensors.numpy import load_file
    return load_file(str(path))
  if suffix in ('.pth', '.pt', '.bin', '.tar', '.ckpt'):
    return _read_pth(path, allow_pickle)
  raise ValueError(f'{path}: unknown checkpoint format {suffix!r} (want .pth, .npz or .safetensors).')


def unwrap(ckpt: Mapping[str, Any], key: str | None = None, prefix: str = '') -> dict[str, np.ndarray]:
  """Flat {state_dict key: array} from an official container: picks `key` or the first of
  CONTAINER_KEYS present, strips 'module.' (and `prefix`, e.g. 'sd/'), drops num_batches_tracked."""
  if key is not None:
    ckpt = ckpt[key]
  else:
    while isinstance(ckpt, Mapping):
      inner = next((k for k in CONTAINER_KEYS if isinstance(ckpt.get(k), Mapping)), None)
      if inner is None:
        break
      ckpt = ckpt[inner]
  out = {}
  for k, v in ckpt.items():
    if prefix:
      if not k.startswith(prefix):
        continue
      k = k[len(prefix):]
    if k.startswith('module.'):
      k = k[len('module.'):]
    if k.endswith(DROPPED_SUFFIXES):
      continue
    out[k] = np.asarray(_to_numpy(v))
  return out
