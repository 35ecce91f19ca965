"""Host input-pipeline throughput: per-stage costs, the train pipeline with augmentation on the host or
on the device, the eval pipeline, and what the device half costs next to a KD step.

    python benchmarks/input_pipeline.py --json --out benchmarks/results/input_pipeline_cpu.json
    python benchmarks/input_pipeline.py --json --seconds 5 --sources synthetic     # quick look

Per source of JPEG bytes ('real' = the ImageNet photos in ../shared/data/imagenet-sample or
$LKD_SAMPLE_DIR, skipped if absent; 'synthetic' = smooth random photos at ImageNet's typical full
size 500x375 / 375x500, JPEG quality 90), all with the paper's recipe (configs/common.py: RRC 224
bicubic, flip 0.5, rand-m9-mstd0.5-inc1, random erasing 0.25 'pixel'; eval resize 256, centre 224):
- stages: the host recipe built up one stage at a time (read = tf.io.read_file of the files; then,
  on the bytes in memory, decode of the random-crop window, + antialiased resize, + flip,
  + RandAugment, + erasing, + batching); each stage's ms per image is the difference of CPU time
  per image between it and the stage before.
- train_host: tfds_pipeline.train_map_fn with data.augment_on='host' (everything in tf.data);
  train_device: with augment_on='device' (the host half: decode of the crop window into the
  canvas; lkd_jax/data/device_augment.py finishes the recipe in the jitted step); eval:
  tfds_pipeline.eval_map_fn. All through tf.data with the pipeline's options (tfds_pipeline.options),
  AUTOTUNE map, batch (train_device: tfds_pipeline.batch_train's padded batch), prefetch; warm-up,
  then a timed pass.
- device_half: device_augment.images on a real train_device batch, jitted with JAX on this host:
  XLA's FLOP count per image next to the KD step's dense GFLOP per image (2 x teacher + 6 x student
  forward, lkd_jax.models.macs, as benchmarks/kd_step.py counts it), and its time per image on this
  CPU next to the KD step's here (from --kd-step-json, a kd_step.py result).
Rates: img_per_cpu_s = images / this process's CPU seconds (user + system): the per-core figure that
other jobs on the machine do not dilute, the one to size a host with. img_per_s is wall-clock: a
lower bound when other jobs share the cores (see the load averages in the JSON).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from emit import add_output_args, cpu_model, emit  # noqa: E402  (benchmarks/emit.py, beside this script)
from configs import common  # noqa: E402
from lkd_jax.data import augment as A  # noqa: E402
from lkd_jax.data import tfds_pipeline as tp  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE_DIR = os.environ.get('LKD_SAMPLE_DIR', os.path.join(HERE, '..', '..', 'shared', 'data',
                                                           'imagenet-sample'))
KD_STEP_JSON = os.path.join(HERE, 'results', 'kd_step_cpu_three_pairs_own_processes.json')


def real_jpegs() -> list[str]:
  """Paths of the sample ImageNet photos (empty when the folder is absent)."""
  return sorted(glob.glob(os.path.join(SAMPLE_DIR, '*.JPEG')))


def synthetic_jpegs(n: int, folder: str, seed: int = 0) -> list[str]:
  """n photo-like images (smooth colour fields + grain), 500x375 or 375x500, JPEG quality 90,
  written to folder; returns their paths."""
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(n):
    h, w = (375, 500) if i % 4 else (500, 375)
    coarse = tf.constant(rng.uniform(0, 255, (1, 12, 16, 3)), tf.float32)
    img = tf.image.resize(coarse, [h, w], method='bicubic')[0]
    img += rng.normal(0, 8, (h, w, 3))
    img = tf.cast(tf.clip_by_value(img, 0, 255), tf.uint8)
    paths.append(os.path.join(folder, f'{i}.jpg'))
    tf.io.write_file(paths[-1], tf.io.encode_jpeg(img, quality=90))
  return paths


def _examples(jpegs: list[bytes]) -> tf.data.Dataset:
  return tf.data.Dataset.from_tensor_slices(
      {'image': jpegs, 'label': np.arange(len(jpegs), dtype=np.int32)}).repeat()


def _finish(ds: tf.data.Dataset, d) -> tf.data.Dataset:
  return ds.with_options(tp.options(d.threads)).prefetch(d.prefetch)


def train_dataset(jpegs: list[bytes], d, batch: int) -> tf.data.Dataset:
  """Endless train batches through the pipeline's map function and batching for d.augment_on."""
  ds = _examples(jpegs).enumerate().map(tp.train_map_fn(d, seed=0, process_index=0),
                                        num_parallel_calls=tp.AUTOTUNE)
  return _finish(tp.batch_train(ds, d, batch), d)


def eval_dataset(jpegs: list[bytes], d, batch: int) -> tf.data.Dataset:
  """Endless batches through the pipeline's eval map function."""
  ds = _examples(jpegs).map(tp.eval_map_fn(d), num_parallel_calls=tp.AUTOTUNE)
  return _finish(ds.batch(batch, drop_remainder=True), d)


def _stage_fns(d) -> list[tuple[str, object]]:
  """(stage, map fn of (index, bytes)) for the host recipe built up cumulatively; every stage but
  'batching' returns one pixel, so it pays no batch copy."""
  base = tf.constant([0, 0], tf.int64)
  size, scale, ratio, method = d.image_size, tuple(d.scale), tuple(d.ratio), d.interpolation

  def upto(stage: str):
    def fn(i, data):
      s_crop, s_flip, s_ra, s_re = tf.unstack(tf.random.experimental.stateless_split(
          tf.random.experimental.stateless_fold_in(base, i), 4))
      crop, _ = A._decode_crop(data, lambda hw: A.rrc_window(hw, s_crop, scale, ratio))
      if stage == 'decode':
        return crop[:1, :1]
      image = A._resize(crop, size, method)
      if stage != 'resize':
        flip = tf.random.stateless_uniform([], s_flip) < d.hflip
        image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
      if stage not in ('resize', 'flip'):
        image = A.rand_augment(image, s_ra, d.randaugment)
      if stage in ('erasing', 'batching'):
        image = A.random_erasing(image, s_re, d.reprob, d.remode, count=d.recount)
      return image if stage == 'batching' else image[:1, :1]
    return fn
  return [(s, upto(s)) for s in ('decode', 'resize', 'flip', 'randaugment', 'erasing', 'batching')]


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
          'cpu_ms_per_img': round(1e3 * dc / (n * batch), 3), 'timed_s': round(dt, 2)}


def stages(paths: list[str], jpegs: list[bytes], d, batch: int, warmup: int, seconds: float
           ) -> list[dict]:
  """The per-stage table: cumulative rate and each stage's own CPU ms per image."""
  read = tf.data.Dataset.from_tensor_slices(paths).repeat().map(
      lambda p: tf.strings.length(tf.io.read_file(p)), num_parallel_calls=tp.AUTOTUNE)
  rows = [{'stage': 'read', **throughput(_finish(read.batch(batch), d), batch, warmup, seconds)}]
  data = tf.data.Dataset.from_tensor_slices(jpegs).repeat().enumerate()
  prev = 0.0
  for name, fn in _stage_fns(d):
    ds = _finish(data.map(fn, num_parallel_calls=tp.AUTOTUNE).batch(batch), d)
    r = throughput(ds, batch, warmup, seconds)
    rows.append({'stage': name, **r, 'stage_cpu_ms_per_img': round(r['cpu_ms_per_img'] - prev, 3)})
    prev = r['cpu_ms_per_img']
  rows[0]['stage_cpu_ms_per_img'] = rows[0]['cpu_ms_per_img']
  return rows


def device_half(batch: dict, d, kd_pair: str, kd_step_json: str, reps: int) -> dict:
  """FLOPs and CPU time per image of device_augment.images on `batch`, next to the KD step's."""
  import jax
  from lkd_jax.data import device_augment
  from lkd_jax.models import macs
  fn = jax.jit(lambda b: device_augment.images(b, d))
  compiled = fn.lower(batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  n = len(batch['label'])
  jax.block_until_ready(compiled(batch))
  c0, t0 = _cpu_s(), time.perf_counter()
  for _ in range(reps):
    jax.block_until_ready(compiled(batch))
  cpu_ms, wall_ms = 1e3 * (_cpu_s() - c0) / (reps * n), 1e3 * (time.perf_counter() - t0) / (reps * n)
  teacher, student = kd_pair.split(':')
  kd_gflop = (2 * macs.count_macs(teacher, d.image_size) + 6 * macs.count_macs(student, d.image_size)
              ) / 1e9
  gflop = float(cost['flops']) / n / 1e9
  out = dict(batch=n, canvas=int(batch['image'].shape[1]), gflop_per_img=round(gflop, 4),
             kd_pair=kd_pair, kd_step_gflop_per_img=round(kd_gflop, 2),
             flop_share_of_kd_step=round(gflop / kd_gflop, 4),
             bytes_accessed_per_img=int(float(cost.get('bytes accessed', 0)) / n),
             cpu_ms_per_img=round(cpu_ms, 2), wall_ms_per_img=round(wall_ms, 2))
  if os.path.exists(kd_step_json):
    rows = json.load(open(kd_step_json))['cases']
    row = next((r for r in rows if f"{r['teacher']}:{r['student']}" == kd_pair), None)
    if row:
      kd_ms = 1e3 * row['jax_step_s'] / row['batch']
      out.update(kd_step_wall_ms_per_img_cpu=round(kd_ms, 1),
                 time_share_of_kd_step_cpu=round(wall_ms / kd_ms, 4),
                 kd_step_source=os.path.relpath(kd_step_json, os.path.join(HERE, '..')))
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add_output_args(p)
  p.add_argument('--sources', default='real,synthetic', help='real and/or synthetic')
  p.add_argument('--synthetic', type=int, default=100, help='number of synthetic images')
  p.add_argument('--batch', type=int, default=128, help='host batch')
  p.add_argument('--warmup', type=int, default=3, help='batches before timing')
  p.add_argument('--seconds', type=float, default=20.0, help='timed seconds per pipeline case')
  p.add_argument('--stage-seconds', type=float, default=6.0, help='timed seconds per stage')
  p.add_argument('--device-batch', type=int, default=32, help='batch of the device-half timing')
  p.add_argument('--kd-pair', default='slak_t:resnet50', help='teacher:student of the KD step')
  p.add_argument('--kd-step-json', default=KD_STEP_JSON, help='kd_step.py result (CPU time)')
  a = p.parse_args(argv)
  tp.hide_accelerators_from_tf()
  d_host = common.base_config().data  # the paper's recipe: 224, rand-m9-mstd0.5-inc1, reprob 0.25
  d_host.augment_on = 'host'
  d_dev = d_host.copy_and_resolve_references()
  d_dev.augment_on = 'device'
  cores = len(os.sched_getaffinity(0))
  load_before = os.getloadavg()
  cases, dev = [], None
  with tempfile.TemporaryDirectory() as tmp:
    for source in a.sources.split(','):
      if source not in ('real', 'synthetic'):
        raise SystemExit(f'--sources takes real and/or synthetic, not {source!r}.')
      paths = real_jpegs() if source == 'real' else synthetic_jpegs(a.synthetic, tmp)
      if not paths:
        cases.append({'source': source, 'skipped': f'no JPEGs in {os.path.abspath(SAMPLE_DIR)}'})
        continue
      jpegs = [open(f, 'rb').read() for f in paths]
      row = {'source': source, 'images': len(jpegs),
             'mean_jpeg_kb': round(float(np.mean([len(j) for j in jpegs])) / 1024, 1),
             'stages': stages(paths, jpegs, d_host, a.batch, a.warmup, a.stage_seconds)}
      for kind, build, d in (('train_host', train_dataset, d_host),
                             ('train_device', train_dataset, d_dev), ('eval', eval_dataset, d_host)):
        r = throughput(build(jpegs, d, a.batch), a.batch, a.warmup, a.seconds)
        row.update({f'{kind}_{k}': v for k, v in r.items()})
      cases.append(row)
      if dev is None:   # the first source's batch
        batch = next(iter(train_dataset(jpegs, d_dev, a.device_batch)))
        host_resized = float(np.mean(np.all(batch['crop_hw'].numpy() == d_dev.image_size, 1)))
        dev = device_half({k: v.numpy() for k, v in batch.items()}, d_dev, a.kd_pair,
                          a.kd_step_json, reps=3)
        dev['source'] = source
        dev['crops_resized_on_host_in_batch'] = host_resized
  out = dict(
      benchmark='input_pipeline', device=f'cpu: {cpu_model()}, {cores} usable cores',
      cores=cores, tensorflow=tf.__version__, batch=a.batch,
      train_recipe={k: d_host[k] for k in ('image_size', 'scale', 'ratio', 'interpolation', 'hflip',
                                           'randaugment', 'reprob', 'remode')},
      canvas=d_dev.canvas or 2 * d_dev.image_size,
      eval_recipe={k: d_host[k] for k in ('image_size', 'crop_pct', 'interpolation')},
      tf_data_options={'threads': d_host.threads or cores, 'max_intra_op_parallelism': 1,
                       'inject_prefetch': False, 'deterministic': True},
      load_average_before=[round(x, 2) for x in load_before],
      load_average_after=[round(x, 2) for x in os.getloadavg()],
      units='images per second (JPEG bytes in memory -> uint8 batches); ms = CPU ms per image',
      notes=[f'load average above {cores} means other jobs shared the cores: wall-clock rates are '
             'lower bounds; img_per_cpu_s is not diluted by them',
             'train_device batches are 448x448 canvases + crop sizes + seeds; the device half '
             '(device_half) is not in the host figures'],
      cases=cases, device_half=dev)
  emit(out, a.out, a.json)
  if not a.json:
    for c in cases:
      print(c)
    print(dev)


if __name__ == '__main__':
  main()
