"""TFDS pipeline on a tiny on-disk dataset (labels are example ids), an image folder, mock_data."""
import os

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import common
from lkd_jax import data as data_lib
from lkd_jax.data import device_augment
from lkd_jax.data import tfds_pipeline as tp
from lkd_jax.errors import SetupError

NUM_TRAIN, NUM_EVAL, SIZE = 24, 10, 32


def _jpegs(rng: np.random.Generator, n: int) -> list[bytes]:
  """n random JPEGs of random non-square sizes (the pipeline must crop/resize them to SIZE)."""
  return [tf.io.encode_jpeg(rng.integers(0, 256, (int(rng.integers(12, 60)),
                                                  int(rng.integers(12, 60)), 3), np.uint8)).numpy()
          for _ in range(n)]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """A prepared TFDS dataset 'lkd_tiny_ids': label = example id, so each example is identifiable."""
  root = str(tmp_path_factory.mktemp('tfds'))
  rng = np.random.default_rng(0)
  split = lambda n: tf.data.Dataset.from_tensor_slices({'image': _jpegs(rng, n),
                                                        'label': np.arange(n)})
  tfds.dataset_builders.store_as_tfds_dataset(
      name='lkd_tiny_ids', version='1.0.0', data_dir=root,
      split_datasets={'train': split(NUM_TRAIN), 'validation': split(NUM_EVAL)},
      features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
          'label': tfds.features.ClassLabel(num_classes=NUM_TRAIN)}))
  return root


def _cfg(data_dir='', batch=8, eval_batch=8, seed=0, num_classes=0, **data):
  c = common.base_config()
  c.seed, c.batch_size, c.eval_batch_size, c.num_classes = seed, batch, eval_batch, num_classes
  c.data.update(name='lkd_tiny_ids', data_dir=data_dir, image_size=SIZE, shuffle_buffer=64,
                threads=2)
  c.data.update(data)
  return c


def _take(it, n):
  return [next(it) for _ in range(n)]


def _eval_ids(cfg, count):
  """Per process: (number of eval batches, ids of the real examples), checking padding is zero."""
  out, local = [], cfg.eval_batch_size // count
  for i in range(count):
    batches = list(tp.build(cfg, process_index=i, process_count=count).eval())
    for b in batches:
      assert b['image'].shape == (local, SIZE, SIZE, 3) and b['mask'].shape == (local,)
      assert not b['image'][~b['mask']].any() and not b['label'][~b['mask']].any()
    out.append((len(batches), [int(x) for b in batches for x in b['label'][b['mask']]]))
  return out


@pytest.mark.parametrize('augment_on', ['device', 'host'])
def test_batch_shapes_and_dtypes_with_randaugment(data_dir, augment_on):
  cfg = _cfg(data_dir, augment_on=augment_on)
  assert cfg.data.randaugment and cfg.data.reprob > 0  # the paper's recipe, not a reduced one.
  ds = tp.build(cfg, process_index=0, process_count=1)
  assert (ds.num_classes, ds.num_train, ds.image_size) == (NUM_TRAIN, NUM_TRAIN, SIZE)
  b = next(ds.train(0))
  side = 2 * SIZE if augment_on == 'device' else SIZE   # device: crops padded into the canvas
  assert b['image'].shape == (8, side, side, 3) and b['image'].dtype == np.uint8
  assert b['label'].shape == (8,) and b['label'].dtype == np.int32
  assert b['image'].std() > 1
  if augment_on == 'device':
    assert b['crop_hw'].dtype == np.int32 and b['aug_seed'].dtype == np.uint32
    assert ((b['crop_hw'] >= 1) & (b['crop_hw'] <= side)).all() and b['aug_seed'].shape == (8, 2)
    for img, (h, w) in zip(b['image'], b['crop_hw']):   # zeros outside the crop
      assert not img[h:].any() and not img[:, w:].any()
  e = next(ds.eval())
  assert e['image'].shape == (8, SIZE, SIZE, 3) and e['image'].dtype == np.uint8
  assert e['label'].dtype == np.int32 and e['mask'].dtype == bool and e['mask'].shape == (8,)


@pytest.mark.parametrize('count,eval_batch,steps', [(2, 4, 3), (3, 6, 2)])
def test_eval_shares_are_disjoint_complete_padded_and_equal_in_steps(data_dir, count, eval_batch,
                                                                      steps):
  per_process = _eval_ids(_cfg(data_dir, batch=6, eval_batch=eval_batch), count)
  assert [n for n, _ in per_process] == [steps] * count  # 10 examples, 2 x 2 per step: 3 steps.
  ids = [i for _, mine in per_process for i in mine]
  assert sorted(ids) == list(range(NUM_EVAL))           # each example exactly once over processes.


def test_num_eval_caps_the_eval_split(data_dir):
  per_process = _eval_ids(_cfg(data_dir, batch=4, eval_batch=4, num_eval=7), 2)
  first7 = tfds.builder('lkd_tiny_ids', data_dir=data_dir).as_dataset(split='validation[:7]')
  assert sorted(i for _, mine in per_process for i in mine) == sorted(
      int(ex['label']) for ex in first7)


def test_train_epoch_is_split_disjointly_over_processes(data_dir):
  cfg = _cfg(data_dir, randaugment='')  # global batch 8 = 2 x 4; 12 per process = 3 steps/epoch.
  ids = [np.concatenate([b['label'] for b in _take(
      tp.build(cfg, process_index=i, process_count=2).train(0), 3)]) for i in range(2)]
  assert all(len(set(x.tolist())) == 12 for x in ids)
  assert sorted(np.concatenate(ids).tolist()) == list(range(NUM_TRAIN))


def test_same_seed_same_batches_other_seed_differs(data_dir):
  first = lambda seed: next(tp.build(_cfg(data_dir, seed=seed, randaugment=''), process_index=0,
                                     process_count=1).train(0))
  a, b, c = first(0), first(0), first(1)
  assert np.array_equal(a['image'], b['image']) and np.array_equal(a['label'], b['label'])
  assert not np.array_equal(a['label'], c['label'])


def test_resume_mid_epoch_repeats_the_uninterrupted_batches_bitwise(data_dir):
  ds_cfg = _cfg(data_dir, augment_on='device')  # the device half too, with the paper's recipe
  ds = tp.build(ds_cfg, process_index=0, process_count=1)  # 3 steps/epoch; RandAugment on.
  full = _take(ds.train(0), 8)
  for epoch in range(2):  # every epoch shows each example exactly once, in a new order.
    ids = np.concatenate([b['label'] for b in full[3 * epoch:3 * epoch + 3]])
    assert sorted(ids.tolist()) == list(range(NUM_TRAIN))
  assert not np.array_equal(full[0]['label'], full[3]['label'])
  resumed = _take(ds.train(4), 4)  # resume inside epoch 1, run across the boundary into epoch 2.
  for x, y in zip(full[4:], resumed):
    assert x.keys() == y.keys() == {'image', 'crop_hw', 'aug_seed', 'label'}
    assert all(np.array_equal(x[k], y[k]) for k in x)
  # The device half is a pure function of the host batch: the pixels the step trains on repeat too.
  finish = jax.jit(lambda b: device_augment.images(b, ds_cfg.data))
  np.testing.assert_array_equal(finish(full[5]), finish(resumed[1]))


def test_missing_dataset_names_the_data_dir_and_how_to_prepare_it(tmp_path):
  with pytest.raises(tp.DatasetNotFoundError) as e:
    tp.build(_cfg(str(tmp_path), name='imagenet2012'), process_index=0, process_count=1)
  msg = str(e.value)
  for text in (str(tmp_path), f'{tmp_path}/downloads/manual', 'ILSVRC2012_img_train.tar',
               'ILSVRC2012_img_val.tar', 'image-net.org', 'tfds build imagenet2012 --data_dir',
               '--manual_dir'):
    assert text in msg
  assert isinstance(e.value, data_lib.DatasetNotFoundError)  # main.py catches this class.
  assert isinstance(e.value, FileNotFoundError) and not os.listdir(tmp_path)
  with pytest.raises(tp.DatasetNotFoundError, match='tfds build cifar100'):
    tp.build(_cfg(str(tmp_path), name='cifar100'), process_index=0, process_count=1)
  with pytest.raises(tp.DatasetNotFoundError, match='does not exist'):
    tp.build(_cfg(name=f'folder:{tmp_path}/none'), process_index=0, process_count=1)


def _image_folder(root, splits=(('train', 4), ('val', 3)), classes=('cat', 'dog', 'emu')) -> str:
  """root/<split>/<class>/<k>.jpg with n small random JPEGs per class; returns 'folder:root'."""
  rng = np.random.default_rng(1)
  for split, n in splits:
    for cls in classes:
      os.makedirs(root / split / cls)
      for k, jpeg in enumerate(_jpegs(rng, n)):
        (root / split / cls / f'{k}.jpg').write_bytes(jpeg)
  return f'folder:{root}'


def test_image_folder(tmp_path):
  cfg = _cfg(name=_image_folder(tmp_path), eval_split='val', batch=4, eval_batch=4, randaugment='',
             augment_on='host')
  ds = tp.build(cfg, process_index=0, process_count=2)
  assert (ds.num_classes, ds.num_train) == (3, 12)
  b = next(ds.train(0))
  assert b['image'].shape == (2, SIZE, SIZE, 3) and set(b['label'].tolist()) <= {0, 1, 2}
  masks = [np.concatenate([e['mask'] for e in tp.build(cfg, process_index=i,
                                                       process_count=2).eval()]) for i in range(2)]
  assert [len(m) for m in masks] == [6, 6] and sum(m.sum() for m in masks) == 9


def test_folder_eval_split_and_num_classes_come_from_the_folder(tmp_path):
  cfg = _cfg(name=_image_folder(tmp_path), batch=4, eval_batch=4, randaugment='')
  assert (cfg.data.eval_split, cfg.num_classes) == ('', 0)  # '' is the default: the dataset's own.
  resolved = tp.resolve(cfg)
  assert (resolved.data.eval_split, resolved.num_classes) == ('val', 3)
  assert (cfg.data.eval_split, cfg.num_classes) == ('', 0)  # a copy: cfg itself is unchanged.
  ds = tp.build(cfg, process_index=0, process_count=1)  # build resolves '' the same way.
  assert ds.num_classes == 3 and sum(e['mask'].sum() for e in ds.eval()) == 9
  cfg.num_classes = 3
  assert tp.resolve(cfg).num_classes == 3
  cfg.num_classes = 1000
  with pytest.raises(SetupError, match=r"num_classes=1000 but dataset 'folder:.*' has 3 classes.*"
                                       r'num_classes=0'):
    tp.resolve(cfg)


def test_folder_with_val_and_test_is_ambiguous_until_eval_split_names_one(tmp_path):
  cfg = _cfg(name=_image_folder(tmp_path, splits=(('train', 2), ('val', 1), ('test', 1))))
  with pytest.raises(SetupError) as e:
    tp.resolve(cfg)
  assert 'several eval splits (val, test)' in str(e.value)
  assert 'eval_split=NAME' in str(e.value) and '--config.data.eval_split=NAME' in str(e.value)
  assert '\n' not in str(e.value)
  cfg.data.eval_split = 'test'
  assert tp.resolve(cfg).data.eval_split == 'test'


def test_folder_without_an_eval_split_lists_its_splits(tmp_path):
  cfg = _cfg(name=_image_folder(tmp_path, splits=(('train', 2), ('holdout', 1))))
  with pytest.raises(SetupError, match=r'no split named validation or val or test \(its splits: '
                                       r'holdout, train\).*eval_split=NAME'):
    tp.resolve(cfg)
  cfg.data.eval_split = 'holdout'
  assert tp.resolve(cfg).data.eval_split == 'holdout'


def test_a_split_that_does_not_exist_names_the_splits_that_do(tmp_path, data_dir):
  folder = _cfg(name=_image_folder(tmp_path), eval_split='validation')
  tiny = _cfg(data_dir, eval_split='val')
  for cfg, splits in ((folder, 'train, val'), (tiny, 'train, validation')):
    for build in (tp.resolve, lambda c: tp.build(c, process_index=0, process_count=1)):
      with pytest.raises(data_lib.DatasetNotFoundError) as e:
        build(cfg)
      msg = str(e.value)
      assert f"data.eval_split={cfg.data.eval_split!r} is not a split of dataset" in msg
      assert sorted(msg.split('its splits: ')[1].split('.')[0].split(', ')) == splits.split(', ')
      assert '--config.data.eval_split=NAME' in msg and isinstance(e.value, SetupError)
  tiny.data.update(eval_split='', train_split='training')
  with pytest.raises(SetupError, match="data.train_split='training' is not a split.*"
                                       '--config.data.train_split=NAME'):
    tp.resolve(tiny)
  tiny.data.update(train_split='train[:50%]', eval_split='validation[:4]')  # TFDS split specs.
  assert tp.resolve(tiny).data.eval_split == 'validation[:4]'


def test_tfds_eval_split_defaults_to_validation_and_num_classes_to_the_dataset(data_dir):
  resolved = tp.resolve(_cfg(data_dir))
  assert (resolved.data.eval_split, resolved.num_classes) == ('validation', NUM_TRAIN)
  mock = _cfg(name='imagenet2012', mock=2)
  assert (tp.resolve(mock).data.eval_split, tp.resolve(mock).num_classes) == ('validation', 1000)


def test_mock_imagenet2012_tiny_random_images_are_resized():
  cfg = _cfg(name='imagenet2012', mock=6, batch=4, eval_batch=4, randaugment='', augment_on='host')
  ds = tp.build(cfg, process_index=0, process_count=1)
  assert (ds.num_classes, ds.num_train) == (1000, 6)
  b = next(ds.train(0))
  assert b['image'].shape == (4, SIZE, SIZE, 3) and b['label'].max() < 1000
  masks = [e['mask'] for e in ds.eval()]
  assert len(masks) == 2 and sum(m.sum() for m in masks) == 6
