"""TFDS input pipeline: per-process splits, decode fused with the crop, exact resume, padded eval.

Sources (cfg.data.name):
  - a TFDS image-classification dataset with 'image' and 'label' features ('imagenet2012',
    'cifar100', 'imagenette/full-size-v2', 'name/config:version', ...) prepared in cfg.data.data_dir
    ('' = TFDS default: $TFDS_DATA_DIR or ~/tensorflow_datasets). Nothing is ever downloaded here: a
    dataset that is not prepared raises DatasetNotFoundError saying how to prepare it.
  - 'folder:ROOT': images in ROOT/<split>/<class>/*.{jpg,jpeg,png} read by
    tfds.folder_dataset.ImageFolder; classes are the sorted class folder names (over all splits),
    splits the folders of ROOT that hold class folders.
  - cfg.data.mock = N > 0: N random examples per split from tfds.testing.mock_data (random 5-49 px
    images; smoke tests, no files needed).

Train order and resume. Epoch e is one tf.data pass whose order is a pure function of (cfg.seed, e):
file order and shuffle buffer are both seeded with seed_e, the epoch keeps its first
steps_per_epoch * local_batch examples (every process runs the same number of steps), and example i
of the epoch is augmented with the stateless seed fold_in((seed_e, process_index), i). A run resumed
at step k starts epoch k // steps_per_epoch and skips the (k % steps_per_epoch) * local_batch
examples already consumed, on the raw undecoded records. Chosen over reseeding at resume because a
resumed run then sees exactly the batches an uninterrupted run sees (bitwise: tf.data is
deterministic here), as with the synthetic data. Costs: at resume, reading (not decoding) at most
one epoch's share of records; at each epoch start, refilling the shuffle buffer (one pass per
epoch instead of .repeat(), whose fused shuffle-and-repeat keeps the buffer but cannot be resumed).

Splits and classes (resolve(), also applied by build()). data.eval_split '' means the dataset's
eval split: a TFDS dataset's 'validation' if it has one (imagenet2012's 'test' has no labels), else
its only split named val, validation or test; a folder's only such split. A missing split, or
several (or no) candidates for '', raise a SetupError that lists the splits. num_classes 0 means
the dataset's class count; another count that differs from the dataset's raises a SetupError.

Eval: this process's share of the eval split in file order, zero-padded with mask=False up to
ceil(ceil(n / process_count) / local_batch) full batches, so every process runs the same number of
steps and every example counts exactly once (big_vision make_for_inference).
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, NamedTuple

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from lkd_jax.data import (Batch, Dataset, DatasetNotFoundError, augment, device_augment,
                          hide_accelerators_from_tf)
from lkd_jax.errors import SetupError

FOLDER_PREFIX = 'folder:'
AUTOTUNE = tf.data.AUTOTUNE
EVAL_SPLITS = ('validation', 'val', 'test')  # the names an unset data.eval_split looks for


class Process(NamedTuple):
  index: int
  count: int


class Source(NamedTuple):
  """A dataset on disk (or mocked) and how to read its splits."""
  builder: tfds.core.DatasetBuilder
  subsplits: bool  # False (ImageFolder, mock_data): read the whole split, then take + shard.
  mock: int = 0


class DatasetSpec(NamedTuple):
  """What the config must agree with, read from the dataset's metadata before any pipeline."""
  splits: tuple[str, ...]  # () for mock_data, which generates any split asked for
  num_classes: int
  eval_split: str          # data.eval_split, or the split that '' resolves to


def build(cfg: ml_collections.ConfigDict, *, process_index: int | None = None,
          process_count: int | None = None) -> Dataset:
  """cfg.data's dataset for this process (default: jax's); a missing dataset raises first."""
  hide_accelerators_from_tf()
  device_augment.check(cfg.data)
  source = open_source(cfg.data)
  if process_index is None or process_count is None:
    import jax
    process_index, process_count = jax.process_index(), jax.process_count()
  proc = Process(process_index, process_count)
  spec = dataset_spec(source, cfg.data)
  num_train = split_size(source, cfg.data.train_split, cfg.data.num_train)
  plan = train_plan(num_train, cfg.batch_size, proc)
  eval_ds = eval_dataset(source, cfg, proc, spec.eval_split)
  return Dataset(
      train=lambda start_step: train_batches(source, cfg, proc, plan, start_step),
      eval=eval_ds.as_numpy_iterator, num_classes=spec.num_classes,
      num_train=num_train, image_size=cfg.data.image_size)


def resolve(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of cfg with eval_split '' and num_classes 0 taken from the dataset; mismatches raise."""
  hide_accelerators_from_tf()
  device_augment.check(cfg.data)
  spec = dataset_spec(open_source(cfg.data), cfg.data)
  out = cfg.copy_and_resolve_references()
  out.data.eval_split = spec.eval_split
  out.num_classes = resolve_num_classes(cfg.num_classes, spec.num_classes, cfg.data.name)
  return out


def resolve_num_classes(configured: int, dataset: int, name: str) -> int:
  """configured, or the dataset's count when configured is 0; a different count raises."""
  if configured in (0, dataset):
    return dataset
  raise SetupError(
      f'num_classes={configured} but dataset {name!r} has {dataset} classes: set num_classes=0 '
      f'(a configs/slak_kd.py argument, or --config.num_classes=0) to take the dataset\'s count, '
      f'or num_classes={dataset}.')


# ---------------------------------------------------------------------------------------- sources

def open_source(d: ml_collections.ConfigDict) -> Source:
  """The builder of d.name; DatasetNotFoundError names where it looked and what to run."""
  name, mock = d.name, int(d.get('mock', 0))
  if name.startswith(FOLDER_PREFIX):
    root = os.path.expanduser(name[len(FOLDER_PREFIX):])
    if not tf.io.gfile.isdir(root):
      raise DatasetNotFoundError(
          f'Image folder {root!r} (data.name={name!r}) does not exist. Expected layout: '
          f'{root}/<split>/<class>/*.jpg, e.g. {root}/train/n01440764/x.JPEG and {root}/val/...')
    return Source(tfds.folder_dataset.ImageFolder(root), subsplits=False)
  data_dir = d.data_dir or None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError as e:
    root = data_dir or tfds.core.constants.DATA_DIR
    raise DatasetNotFoundError(
        f'Dataset {name!r} is neither a TFDS dataset nor prepared in data_dir {root!r}. Check '
        f'data.name, or set data.data_dir to the folder that holds {name}/.') from e
  if mock > 0:
    return Source(builder, subsplits=False, mock=mock)
  if not builder.is_prepared():
    raise DatasetNotFoundError(_how_to_prepare(builder, name))
  return Source(builder, subsplits=True)


def dataset_spec(source: Source, d: ml_collections.ConfigDict) -> DatasetSpec:
  """Checks d's splits against the source's, resolves eval_split '' and reads the class count."""
  splits = tuple(source.builder.info.splits.keys())
  keys = ('train_split', 'eval_split') if d.eval_split else ('train_split',)
  for key in keys:
    if not has_split(source, d[key], splits):
      raise DatasetNotFoundError(
          f'data.{key}={d[key]!r} is not a split of dataset {d.name!r}; its splits: '
          f'{_listed(splits, d.name)}. Choose one with {_how_to_set(key)}.')
  return DatasetSpec(splits, source.builder.info.features['label'].num_classes,
                     d.eval_split or default_eval_split(splits, d))


def has_split(source: Source, split: str, splits: tuple[str, ...]) -> bool:
  """Whether the source can read split (TFDS: also specs like 'train[:90%]'; mock_data: any)."""
  if source.mock:
    return True
  if not source.subsplits:
    return split in splits
  try:
    source.builder.info.splits[split]
  except (KeyError, ValueError):
    return False
  return True


def default_eval_split(splits: tuple[str, ...], d: ml_collections.ConfigDict) -> str:
  """The eval split an unset data.eval_split means; SetupError when the splits leave it open."""
  if not splits:  # mock_data generates any split: ImageNet's name.
    return 'validation'
  found = [s for s in EVAL_SPLITS if s in splits and s != d.train_split]
  if 'validation' in found and not d.name.startswith(FOLDER_PREFIX):
    return 'validation'
  if len(found) == 1:
    return found[0]
  listed = _listed(splits, d.name)
  problem = (f'has several eval splits ({", ".join(found)})' if found else
             f'has no split named {" or ".join(EVAL_SPLITS)} (its splits: {listed})')
  raise SetupError(f'data.eval_split is unset and dataset {d.name!r} {problem}. Choose one with '
                   f'{_how_to_set("eval_split")}.')


def _listed(splits: tuple[str, ...], name: str) -> str:
  if splits:
    return ', '.join(splits)
  if name.startswith(FOLDER_PREFIX):
    return 'none (a split is a folder ROOT/<split> that holds class folders <class>/*.jpg)'
  return 'none'


def _how_to_set(key: str) -> str:
  flag = f'--config.data.{key}=NAME'
  return f'{key}=NAME (a configs/slak_kd.py argument) or {flag}' if key == 'eval_split' else flag


def _how_to_prepare(builder: tfds.core.DatasetBuilder, name: str) -> str:
  root = os.fspath(builder.data_dir_root)
  head = (f'Dataset {name!r} is not prepared in data_dir {root!r} (no {builder.data_dir}). '
          'lkd_jax never downloads datasets. ')
  manual = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
  if manual:
    return head + (
        f'{name} needs a manual download: put the files below into {root}/downloads/manual/ '
        f"(TFDS' manual_dir), then run\n  tfds build {name} --data_dir {root}\n(or add "
        '--manual_dir DIR if the files are elsewhere), or set data.data_dir to where it is '
        f'already prepared. Instructions from TFDS:\n{manual.strip()}')
  return head + (f'Prepare it with\n  tfds build {name} --data_dir {root}\nor set data.data_dir '
                 'to where it is already prepared.')


def _mocked(n: int):
  if n <= 0:
    return contextlib.nullcontext()
  import tensorflow_datasets.testing as tfds_testing  # test helpers: imported only when mocking.
  return tfds_testing.mock_data(num_examples=n, policy=tfds_testing.MockPolicy.USE_CODE)


def _capped(split: str, cap: int) -> str:
  return f'{split}[:{cap}]' if cap > 0 else split


def split_size(source: Source, split: str, cap: int = 0) -> int:
  """Examples in split[:cap] over all processes (cap 0: the whole split)."""
  if source.subsplits:
    return source.builder.info.splits[_capped(split, cap)].num_examples
  n = source.mock or source.builder.info.splits[split].num_examples
  return min(n, cap) if cap > 0 else n


def share(n: int, proc: Process) -> int:
  """This process's part of n examples as tfds.even_splits sizes it (n % count get one more)."""
  return n // proc.count + int(proc.index < n % proc.count)


def image_label(ex: dict) -> dict:
  """The fields of a raw record that training and evaluation read: encoded image, int32 label."""
  return {'image': ex['image'], 'label': tf.cast(ex['label'], tf.int32)}


def read(source: Source, split: str, cap: int, proc: Process, shuffle_seed: int | None = None,
         fields: Callable[[dict], dict] = image_label) -> tf.data.Dataset:
  """This process's raw records of split[:cap] as `fields` selects them (default image_label)."""
  decoders = {'image': tfds.decode.SkipDecoding()}  # decoded later, fused with the crop.
  if source.subsplits:
    sub = tfds.split_for_jax_process(_capped(split, cap), process_index=proc.index,
                                     process_count=proc.count)
    ds = source.builder.as_dataset(
        split=sub, shuffle_files=shuffle_seed is not None, decoders=decoders,
        read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed, skip_prefetch=True,
                                    try_autocache=False))
  else:
    # No sub-split API (ImageFolder, mock_data): each process reads the split and keeps 1/count.
    with _mocked(source.mock):
      ds = source.builder.as_dataset(split=split, decoders=decoders)
    ds = ds.take(cap if cap > 0 else -1).shard(proc.count, proc.index)
  return ds.map(fields)


def options(threads: int = 0) -> tf.data.Options:
  """big_vision's options: private threadpool, one thread per op, no injected prefetch."""
  o = tf.data.Options()
  o.deterministic = True
  o.threading.private_threadpool_size = threads or len(os.sched_getaffinity(0))
  o.threading.max_intra_op_parallelism = 1
  o.experimental_optimization.inject_prefetch = False  # "stop magic that eats all RAM" (big_vision)
  return o


# ------------------------------------------------------------------------------------------ train

class TrainPlan(NamedTuple):
  local_batch: int
  steps_per_epoch: int


def local_batch_size(global_batch: int, proc: Process, what: str = 'batch_size') -> int:
  """global_batch // process_count, which must divide exactly."""
  if global_batch % proc.count:
    raise ValueError(f'{what}={global_batch} is not divisible by the {proc.count} processes.')
  return global_batch // proc.count


def train_plan(num_train: int, global_batch: int, proc: Process) -> TrainPlan:
  """Batches per epoch, the same on every process (from the smallest per-process share)."""
  local = local_batch_size(global_batch, proc)
  steps = (num_train // proc.count) // local
  if steps == 0:
    raise ValueError(f'The train split has {num_train} examples: fewer than one batch of {local} '
                     f'per process ({proc.count} processes).')
  return TrainPlan(local, steps)


def epoch_seed(seed: int, epoch: int) -> int:
  """The seed of an epoch's file order, shuffle buffer and augmentations."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def train_map_fn(d: ml_collections.ConfigDict, seed: int, process_index: int) -> Callable:
  """(index, raw example) -> augmented example, seeded by (seed, process_index, index) only.

  On the host (device_augment.on_device False): the finished uint8 [S, S, 3] image; else the host
  half (augment.train_preprocess_for_device: crop window, its size, the device's per-example seed).
  """
  base = tf.constant([seed, process_index], tf.int64)
  canvas, on_device = device_augment.canvas_size(d), device_augment.on_device(d)

  def fn(index: tf.Tensor, ex: dict) -> dict:
    key = tf.random.experimental.stateless_fold_in(base, index)
    if on_device:
      return {**augment.train_preprocess_for_device(ex['image'], key, d, canvas),
              'label': ex['label']}
    return {'image': augment.train_preprocess(ex['image'], key, d), 'label': ex['label']}
  return fn


def batch_train(ds: tf.data.Dataset, d: ml_collections.ConfigDict, local_batch: int
                ) -> tf.data.Dataset:
  """Full batches of train_map_fn's examples; device crops zero-padded into the canvas (one copy)."""
  if not device_augment.on_device(d):
    return ds.batch(local_batch, drop_remainder=True)
  side = device_augment.canvas_size(d)
  shapes = {k: [side, side, 3] if k == 'image' else s.shape for k, s in ds.element_spec.items()}
  return ds.padded_batch(local_batch, padded_shapes=shapes, drop_remainder=True)


def train_epoch(source: Source, cfg: ml_collections.ConfigDict, proc: Process, plan: TrainPlan,
                epoch: int, skip_steps: int = 0) -> tf.data.Dataset:
  """The batches of one epoch from step skip_steps on; skipped examples are never decoded."""
  d, seed = cfg.data, epoch_seed(cfg.seed, epoch)
  ds = read(source, d.train_split, d.num_train, proc, shuffle_seed=seed)
  ds = ds.shuffle(d.shuffle_buffer, seed=seed)
  ds = ds.take(plan.steps_per_epoch * plan.local_batch).enumerate()
  ds = ds.skip(skip_steps * plan.local_batch)
  ds = ds.map(train_map_fn(d, seed, proc.index), num_parallel_calls=AUTOTUNE)
  ds = batch_train(ds, d, plan.local_batch)
  return ds.with_options(options(d.threads)).prefetch(d.prefetch)


def train_batches(source: Source, cfg: ml_collections.ConfigDict, proc: Process, plan: TrainPlan,
                  start_step: int = 0) -> Iterator[Batch]:
  """Endless host-local {'image' uint8 [b,S,S,3], 'label' int32 [b]} for steps start_step, ...

  When the device finishes the recipe (device_augment.on_device), 'image' is uint8 [b,C,C,3]
  canvases plus 'crop_hw' int32 [b,2] and 'aug_seed' uint32 [b,2], finished in the step by
  lkd_jax/data/device_augment.py.
  """
  epoch, step = divmod(start_step, plan.steps_per_epoch)
  while True:
    yield from train_epoch(source, cfg, proc, plan, epoch, step).as_numpy_iterator()
    epoch, step = epoch + 1, 0


# ------------------------------------------------------------------------------------------- eval

def eval_map_fn(d: ml_collections.ConfigDict) -> Callable:
  """Raw example -> resized, centre-cropped example (its other fields kept) with mask=True."""
  return lambda ex: {**ex, 'image': augment.eval_preprocess(ex['image'], d), 'mask': True}


def eval_dataset(source: Source, cfg: ml_collections.ConfigDict, proc: Process, split: str,
                 fields: Callable[[dict], dict] = image_label) -> tf.data.Dataset:
  """One padded, masked pass over this process's share of split, as many batches per process.

  `fields` selects what each record yields (read); padding is zeros of the same structure.
  """
  d = cfg.data
  local = local_batch_size(cfg.eval_batch_size, proc, 'eval_batch_size')
  n = split_size(source, split, d.num_eval)
  steps = -(-(-(-n // proc.count)) // local)
  ds = read(source, split, d.num_eval, proc, fields=fields).map(eval_map_fn(d),
                                                               num_parallel_calls=AUTOTUNE)
  if d.cache_eval:
    ds = ds.cache()
  zeros = {k: tf.zeros(s.shape, s.dtype) for k, s in ds.element_spec.items() if k != 'image'}
  pad = tf.data.Dataset.from_tensors({**zeros, 'mask': False,
                                      'image': tf.zeros([d.image_size, d.image_size, 3], tf.uint8)})
  # Finite padding, not take() on endless padding: each pass reads to the end, completing the cache.
  ds = ds.concatenate(pad.repeat(steps * local - share(n, proc)))
  return ds.batch(local, drop_remainder=True).with_options(options(d.threads)).prefetch(d.prefetch)
