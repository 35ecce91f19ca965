"""Entry point: python -m lkd_jax.main --config configs/demo.py[:k=v,...] --workdir DIR."""
import logging as pylogging

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file, optionally with :k=v,k=v arguments.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and the report.')
flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize() first (Cloud TPU pod '
                  'slices, SLURM / Open MPI GPU clusters: the coordinator is auto-detected).')
flags.mark_flags_as_required(['config', 'workdir'])


def _quiet_orbax(record) -> bool:
  # Orbax logs several INFO lines per save; keep its warnings and errors only.
  return record.levelno >= pylogging.WARNING or '/orbax/' not in record.pathname


def main(argv: list[str]) -> None:
  del argv
  logging.get_absl_handler().addFilter(_quiet_orbax)
  from lkd_jax.host_malloc import tune_host_malloc
  malloc_tuned = tune_host_malloc(FLAGS.config.get('host_malloc', 'auto'))  # before JAX's threads start.
  import jax
  import tensorflow as tf
  if FLAGS.multihost:
    jax.distributed.initialize()
  tf.config.set_visible_devices([], 'GPU')  # TF (tf.data, writers) must never take an accelerator.
  from lkd_jax import train
  from lkd_jax.data import DatasetNotFoundError
  logging.info('JAX process %d/%d, %d local / %d global devices (%s); host malloc %s.',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.default_backend(), 'tuned' if malloc_tuned else 'system')
  try:
    train.run(FLAGS.config, FLAGS.workdir)
  except DatasetNotFoundError as e:  # a setup problem, not a bug: the message, no traceback.
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  app.run(main)
