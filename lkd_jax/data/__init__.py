"""Input pipelines: the embedded synthetic task and TFDS datasets, one batch format for both.

A batch is a dict of host numpy arrays for this process: 'image' uint8 NHWC, 'label' int32 and, for
evaluation, 'mask' bool (False on padding). A TFDS train batch augmented on the device (data.augment_on) holds
unresized crops in 'image' (canvases) plus 'crop_hw' and 'aug_seed'; the fused step finishes them
(lkd_jax/data/device_augment.py). Augmentations that both models must share (mixup, cutmix) run on
device inside the fused step (lkd_jax/data/mix.py).
"""
from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

import jax
import ml_collections

from lkd_jax.errors import SetupError

Batch = dict


class DatasetNotFoundError(SetupError, FileNotFoundError):
  """The configured dataset is not prepared where it was looked for; the message says how to prepare it."""


class Dataset(NamedTuple):
  train: Callable[[int], Iterator[Batch]]   # start_step -> endless train batches
  eval: Callable[[], Iterator[Batch]]       # one padded, masked pass over the eval split
  num_classes: int
  num_train: int
  image_size: int


def hide_accelerators_from_tf() -> None:
  """Keeps TensorFlow (tf.data, TensorBoard writers) on the CPU: it never takes accelerator memory."""
  import tensorflow as tf
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF's devices are already initialised (done earlier in this process).
    pass


def build(cfg: ml_collections.ConfigDict) -> Dataset:
  """The dataset named by cfg.data.source ('synthetic' or 'tfds') for this process."""
  if cfg.data.source == 'synthetic':
    return _synthetic(cfg)
  if cfg.data.source == 'tfds':
    from lkd_jax.data import tfds_pipeline
    return tfds_pipeline.build(cfg)
  raise ValueError(f"Unknown data.source {cfg.data.source!r}; use 'synthetic' or 'tfds'.")


def resolve(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of cfg whose num_classes 0 and empty eval split are the dataset's; mismatches raise."""
  if cfg.data.source == 'tfds':
    from lkd_jax.data import tfds_pipeline
    return tfds_pipeline.resolve(cfg)
  if cfg.data.source != 'synthetic':
    raise SetupError(f"Unknown data.source {cfg.data.source!r}; use 'synthetic' or 'tfds'.")
  from lkd_jax.data import synthetic
  out = cfg.copy_and_resolve_references()
  if out.num_classes == 0:
    out.num_classes = synthetic.NUM_CLASSES
  if out.num_classes != synthetic.NUM_CLASSES:
    raise SetupError(f'num_classes={out.num_classes} but the synthetic task has '
                     f'{synthetic.NUM_CLASSES} classes: set num_classes=0 or {synthetic.NUM_CLASSES}.')
  return out


def _synthetic(cfg: ml_collections.ConfigDict) -> Dataset:
  from lkd_jax.data import synthetic
  d = cfg.data
  train_x, train_y = synthetic.make_split(d.seed, 'train', d.num_train, d.image_size)
  val_x, val_y = synthetic.make_split(d.seed, 'validation', d.num_eval, d.image_size)
  proc = dict(process_index=jax.process_index(), process_count=jax.process_count())
  return Dataset(
      train=lambda start: synthetic.train_batches(
          train_x, train_y, batch_size=cfg.batch_size, seed=cfg.seed, start_step=start,
          shift=d.shift, **proc),
      eval=lambda: synthetic.eval_batches(val_x, val_y, batch_size=cfg.eval_batch_size, **proc),
      num_classes=synthetic.NUM_CLASSES, num_train=d.num_train, image_size=d.image_size)
