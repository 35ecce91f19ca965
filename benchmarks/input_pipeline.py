"""Host input-pipeline throughput of the train and eval map functions of tfds_pipeline.py.

    python benchmarks/input_pipeline.py --json --out benchmarks/results/input_pipeline_cpu.json
    python benchmarks/input_pipeline.py --json --seconds 5 --sources synthetic     # quick look

Per source of JPEG bytes held in memory (no disk reads, so this is the CPU cost of decoding and
augmenting): 'real' = the ImageNet photos in ../shared/data/imagenet-sample (or $LKD_SAMPLE_DIR),
skipped if absent; 'synthetic' = smooth random images at ImageNet-like 500x375, JPEG quality 90.
Train: tfds_pipeline.train_map_fn with the paper's recipe (RRC 224 bicubic, flip 0.5,
rand-m9-mstd0.5-inc1, random erasing 0.25); eval: tfds_pipeline.eval_map_fn (resize 256, centre
224). Both run through tf.data with the pipeline's options (tfds_pipeline.options), AUTOTUNE map,
batch, prefetch; a warm-up, then a timed pass. img_per_s_per_core divides wall-clock img/s by the
usable cores (os.sched_getaffinity): a lower bound when other jobs share the cores (see the load
averages). img_per_cpu_s divides by this process's CPU seconds (user + system): the per-core rate
that other jobs do not dilute, the figure to size a host with.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from emit import add_output_args, cpu_model, emit  # noqa: E402  (benchmarks/emit.py, beside this script)
from configs import common  # noqa: E402
from lkd_jax.data import tfds_pipeline as tp  # noqa: E402

SAMPLE_DIR = os.environ.get('LKD_SAMPLE_DIR', os.path.join(
    os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'data', 'imagenet-sample'))


def real_jpegs() -> list[bytes]:
  """The sample ImageNet photos (empty when the folder is absent)."""
  paths = sorted(glob.glob(os.path.join(SAMPLE_DIR, '*.JPEG')))
  return [open(p, 'rb').read() for p in paths]


def synthetic_jpegs(n: int, seed: int = 0) -> list[bytes]:
  """n photo-like images (smooth colour fields + grain), 500x375 or 375x500, JPEG quality 90."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    h, w = (375, 500) if i % 4 else (500, 375)
    coarse = tf.constant(rng.uniform(0, 255, (1, 12, 16, 3)), tf.float32)
    img = tf.image.resize(coarse, [h, w], method='bicubic')[0]
    img += rng.normal(0, 8, (h, w, 3))
    img = tf.cast(tf.clip_by_value(img, 0, 255), tf.uint8)
    out.append(tf.io.encode_jpeg(img, quality=90).numpy())
  return out


def _examples(jpegs: list[bytes]) -> tf.data.Dataset:
  return tf.data.Dataset.from_tensor_slices(
      {'image': jpegs, 'label': np.arange(len(jpegs), dtype=np.int32)}).repeat()


def train_dataset(jpegs: list[bytes], d, batch: int) -> tf.data.Dataset:
  """Endless batches through the pipeline's train map function (per-example stateless seeds)."""
  ds = _examples(jpegs).enumerate().map(tp.train_map_fn(d, seed=0, process_index=0),
                                        num_parallel_calls=tp.AUTOTUNE)
  ds = ds.batch(batch, drop_remainder=True).with_options(tp.options(d.threads))
  return ds.prefetch(d.prefetch)


def eval_dataset(jpegs: list[bytes], d, batch: int) -> tf.data.Dataset:
  """Endless batches through the pipeline's eval map function."""
  ds = _examples(jpegs).map(tp.eval_map_fn(d), num_parallel_calls=tp.AUTOTUNE)
  ds = ds.batch(batch, drop_remainder=True).with_options(tp.options(d.threads))
  return ds.prefetch(d.prefetch)


def _cpu_s() -> float:
  t = os.times()
  return t.user + t.system


def throughput(ds: tf.data.Dataset, batch: int, warmup: int, seconds: float) -> dict:
  """Images per wall second and per CPU second of this process, timed after `warmup` batches."""
  it = iter(ds)
  for _ in range(warmup):
    next(it)
  n, t0, c0 = 0, time.perf_counter(), _cpu_s()
  while time.perf_counter() - t0 < seconds:
    next(it)
    n += 1
  dt, dc = time.perf_counter() - t0, _cpu_s() - c0
  return {'img_per_s': round(n * batch / dt, 1), 'img_per_cpu_s': round(n * batch / dc, 1),
          'batches': n, 'timed_s': round(dt, 2)}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add_output_args(p)
  p.add_argument('--sources', default='real,synthetic', help='real and/or synthetic')
  p.add_argument('--synthetic', type=int, default=100, help='number of synthetic images')
  p.add_argument('--batch', type=int, default=128, help='host batch')
  p.add_argument('--warmup', type=int, default=3, help='batches before timing')
  p.add_argument('--seconds', type=float, default=20.0, help='timed seconds per case')
  a = p.parse_args(argv)
  tp.hide_accelerators_from_tf()
  d = common.base_config().data   # the paper's recipe: 224, rand-m9-mstd0.5-inc1, reprob 0.25, ...
  cores = len(os.sched_getaffinity(0))
  load_before = os.getloadavg()
  cases = []
  for source in a.sources.split(','):
    if source not in ('real', 'synthetic'):
      raise SystemExit(f'--sources takes real and/or synthetic, not {source!r}.')
    jpegs = real_jpegs() if source == 'real' else synthetic_jpegs(a.synthetic)
    if not jpegs:
      cases.append({'source': source, 'skipped': f'no JPEGs in {os.path.abspath(SAMPLE_DIR)}'})
      continue
    row = {'source': source, 'images': len(jpegs),
           'mean_jpeg_kb': round(float(np.mean([len(j) for j in jpegs])) / 1024, 1)}
    for kind, build in (('train', train_dataset), ('eval', eval_dataset)):
      r = throughput(build(jpegs, d, a.batch), a.batch, a.warmup, a.seconds)
      row.update({f'{kind}_{k}': v for k, v in r.items()})
      row[f'{kind}_img_per_s_per_core'] = round(r['img_per_s'] / cores, 1)
    cases.append(row)
  out = dict(
      benchmark='input_pipeline', device=f'cpu: {cpu_model()}, {cores} usable cores',
      cores=cores, tensorflow=tf.__version__, batch=a.batch,
      train_recipe={k: d[k] for k in ('image_size', 'scale', 'ratio', 'interpolation', 'hflip',
                                       'randaugment', 'reprob', 'remode')},
      eval_recipe={k: d[k] for k in ('image_size', 'crop_pct', 'interpolation')},
      tf_data_options={'threads': d.threads or cores, 'max_intra_op_parallelism': 1,
                       'inject_prefetch': False, 'deterministic': True},
      load_average_before=[round(x, 2) for x in load_before],
      load_average_after=[round(x, 2) for x in os.getloadavg()],
      units='images per second (JPEG bytes in memory -> uint8 224x224x3 batches)',
      notes=[f'load average above {cores} means other jobs shared the cores: wall-clock rates are '
             'lower bounds; img_per_cpu_s is not diluted by them'],
      cases=cases)
  emit(out, a.out, a.json)
  if not a.json:
    for c in cases:
      print(c)


if __name__ == '__main__':
  main()
