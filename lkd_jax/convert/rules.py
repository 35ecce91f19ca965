"""The conversion rule: a state_dict key names a Flax path (DESIGN §3).

'a.0.b.weight' -> ('a', 0, 'b', 'kernel' | 'scale'); running_mean/var -> mean/var; any other leaf
(bias, gamma, cls_token, pos_embed, relative_position_bias_table) by name. Conv weights
(O, I/g, kh, kw) become kernels (kh, kw, I/g, O); Linear weights (out, in) become (in, out).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lkd_jax.convert.families import rename_for
from lkd_jax.errors import SetupError

FlaxPath = tuple[Any, ...]
_LEAF_NAMES = {'weight': ('kernel', 'scale'), 'running_mean': ('mean',), 'running_var': ('var',)}


class ConversionError(SetupError):
  """A checkpoint does not fit the model: lists every missing/unexpected key and shape mismatch."""


def candidates(key: str) -> list[FlaxPath]:
  """Flax paths that a state_dict key may name (digits become list indices)."""
  *mods, leaf = [int(p) if p.isdigit() else p for p in key.split('.')]
  return [(*mods, name) for name in _LEAF_NAMES.get(leaf, (leaf,))]


def _perm(path: FlaxPath, ndim: int) -> tuple[int, ...] | None:
  if path[-1] != 'kernel':
    return None
  return {4: (2, 3, 1, 0), 2: (1, 0)}.get(ndim)


def flax_shape(path: FlaxPath, torch_shape: tuple[int, ...]) -> tuple[int, ...]:
  """Shape the torch tensor takes once laid out for `path`."""
  perm = _perm(path, len(torch_shape))
  return tuple(torch_shape) if perm is None else tuple(torch_shape[i] for i in perm)


def to_flax(path: FlaxPath, array: np.ndarray) -> np.ndarray:
  """Lays a torch tensor out for `path` (conv/linear kernels transposed)."""
  perm = _perm(path, array.ndim)
  return array if perm is None else np.transpose(array, perm)


def dotted(path: FlaxPath) -> str:
  """Flax path written like a state_dict key."""
  return '.'.join(str(p) for p in path)


def plan(target: Mapping[FlaxPath, tuple[int, ...]],
         source: Mapping[str, tuple[int, ...]]) -> dict[str, FlaxPath]:
  """Maps every source key to a target path; raises ConversionError listing all problems."""
  mapping, unexpected, mismatched = {}, [], []
  for key, shape in source.items():
    path = next((p for p in candidates(key) if p in target), None)
    if path is None:
      unexpected.append(key)
    elif flax_shape(path, tuple(shape)) != tuple(target[path]):
      mismatched.append(f'{key}: checkpoint {tuple(shape)} -> {flax_shape(path, tuple(shape))}, '
                        f'model {dotted(path)} {tuple(target[path])}')
    else:
      mapping[key] = path
  missing = sorted(dotted(p) for p in set(target) - set(mapping.values()) - _claimed(mismatched, source, target))
  if missing or unexpected or mismatched:
    parts = [f'{len(missing)} missing (model variables without a checkpoint key): {missing}',
             f'{len(unexpected)} unexpected (checkpoint keys without a model variable): {sorted(unexpected)}',
             f'{len(mismatched)} shape mismatches: {mismatched}']
    raise ConversionError('Checkpoint does not fit the model.\n' + '\n'.join(parts))
  return mapping


def _claimed(mismatched: list[str], source, target) -> set[FlaxPath]:
  # Paths whose key is present but mis-shaped are reported as mismatches, not also as missing.
  keys = [m.split(':')[0] for m in mismatched]
  return {next(p for p in candidates(k) if p in target) for k in keys}


def variables_of(model: nnx.Module) -> nnx.State:
  """The convertible variables of a model: parameters and BatchNorm statistics."""
  return nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))


def convert_into(model: nnx.Module, state_dict: Mapping[str, np.ndarray]) -> nnx.Module:
  """Loads a flat torch state_dict into `model` (concrete or from nnx.eval_shape), in place; returns it."""
  sd = rename_for(type(model).__name__)(state_dict)
  flat = dict(nnx.to_flat_state(variables_of(model)))
  target = {p: tuple(v.get_value().shape) for p, v in flat.items()}
  mapping = plan(target, {k: np.shape(v) for k, v in sd.items()})
  for key, path in mapping.items():
    var = flat[path]
    var.set_value(jnp.asarray(to_flax(path, np.asarray(sd[key])), dtype=var.get_value().dtype))
  nnx.update(model, nnx.from_flat_state(flat))
  return model


def torch_key(path: FlaxPath) -> str:
  """The state_dict key the rule maps onto `path` (inverse of `candidates`)."""
  leaf = {'kernel': 'weight', 'scale': 'weight', 'mean': 'running_mean', 'var': 'running_var'}
  return dotted((*path[:-1], leaf.get(path[-1], path[-1])))


def to_torch(path: FlaxPath, array: np.ndarray) -> np.ndarray:
  """Inverse of `to_flax`: a Flax variable laid out as the torch tensor."""
  perm = _perm(path, array.ndim)
  return array if perm is None else np.transpose(array, np.argsort(perm))


def to_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """The model's parameters and BatchNorm statistics as a PyTorch-layout state_dict (keys by
  `torch_key`, tensors by `to_torch`): `convert_into` reads it back into the same model."""
  return {torch_key(path): np.ascontiguousarray(to_torch(path, np.asarray(var.get_value())))
          for path, var in nnx.to_flat_state(variables_of(model))}
