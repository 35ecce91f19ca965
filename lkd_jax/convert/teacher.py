"""Load a (teacher) model from any checkpoint form, and save converted variables for the CLI."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lkd_jax.convert.readers import read_checkpoint, unwrap
from lkd_jax.convert.rules import convert_into, dotted, variables_of
from lkd_jax.errors import SetupError
from lkd_jax.kernels import Kernels
from lkd_jax.models import create
from lkd_jax.models.slak import INFERENCE_FORMS, ReparamLargeKernelConv, merge_large_kernels

VARIABLES_FILE = 'variables.npz'
META_FILE = 'model.json'


def abstract_model(model_name: str, num_classes: int, **model_kw: Any) -> nnx.Module:
  """The model with shapes only (nnx.eval_shape): no parameter memory until variables are loaded."""
  return nnx.eval_shape(lambda: create(model_name, num_classes=num_classes, **model_kw))


def save_converted(model: nnx.Module, dst: str | Path, meta: dict[str, Any]) -> Path:
  """Writes `dst`/variables.npz (Flax paths as dotted keys) and `dst`/model.json."""
  dst = Path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  arrays = {dotted(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(variables_of(model))}
  np.savez(dst / VARIABLES_FILE, **arrays)
  (dst / META_FILE).write_text(json.dumps(meta, indent=1) + '\n')
  return dst


def _load_dir(model: nnx.Module, src: Path, model_name: str, model_kw: dict[str, Any]
              ) -> nnx.Module:
  meta = json.loads((src / META_FILE).read_text())
  if meta.get('model') != model_name:
    raise SetupError(f'{src} holds {meta.get("model")!r} variables, not {model_name!r}.')
  stored_kw, given_kw = meta.get('model_kwargs', {}), json.loads(json.dumps(model_kw))
  if stored_kw != given_kw:
    raise SetupError(f'{src} was converted for {model_name} with model kwargs {stored_kw}, but '
                     f'the model is built with {given_kw}: set teacher.kwargs to {stored_kw}.')
  flat = dict(nnx.to_flat_state(variables_of(model)))
  with np.load(src / VARIABLES_FILE) as f:
    stored = {k: f[k] for k in f.files}
  want = {dotted(p) for p in flat}
  if want != set(stored):
    raise SetupError(f'{src}: missing {sorted(want - set(stored))}, unexpected {sorted(set(stored) - want)}.')
  for p, var in flat.items():
    value = stored[dotted(p)]
    if value.shape != var.get_value().shape:
      raise SetupError(f'{src}: {dotted(p)} has shape {value.shape}, model wants {var.get_value().shape}.')
    var.set_value(jnp.asarray(value, var.get_value().dtype))
  nnx.update(model, nnx.from_flat_state(flat))
  return model


def load_teacher(path: str, model_name: str, num_classes: int, *, inference_form: str = 'branches',
                 key: str | None = None, kernels: Kernels = Kernels(), **model_kw: Any) -> nnx.Module:
  """Builds `model_name` (computing with `kernels`) and loads a .pth/.npz/.safetensors checkpoint
  or a CLI output directory.

  `inference_form='merged'` / `'merged_decom'` (SLaK family only) folds each large-kernel unit's
  BatchNorms and branches into one KxK kernel / a KxN and an NxK kernel, + bias, after loading
  (slak.INFERENCE_FORMS); the eval output is unchanged.
  """
  if inference_form not in INFERENCE_FORMS:
    raise SetupError(f'inference_form must be one of {INFERENCE_FORMS}, got {inference_form!r}.')
  model = abstract_model(model_name, num_classes, kernels=kernels, **model_kw)
  if inference_form != 'branches' and not any(
      isinstance(m, ReparamLargeKernelConv) for _, m in nnx.iter_modules(model)):
    raise SetupError(f'inference_form={inference_form!r} needs a SLaK-family model; {model_name} has no '
                     'large-kernel units.')
  src = Path(path)
  if src.is_dir() and (src / META_FILE).exists():
    model = _load_dir(model, src, model_name, model_kw)
  else:
    model = convert_into(model, unwrap(read_checkpoint(src), key))
  return merge_large_kernels(model, inference_form)
