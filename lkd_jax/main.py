"""Entry point: python -m lkd_jax.main --config configs/demo.py[:k=v,...] --workdir DIR [--overwrite].

Problems with the config, the files or the workdir are printed as one line naming the fix
(`--debug` shows the traceback); `--help` with a `--config` also lists that config's arguments.
"""
import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from lkd_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file, optionally with :k=v,k=v arguments.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and the report.')
flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize() first (Cloud TPU pod '
                  'slices, SLURM / Open MPI GPU clusters: the coordinator is auto-detected).')
flags.DEFINE_string('coordinator_address', None, 'With --multihost elsewhere (plain GPU hosts, one '
                    'machine): host:port of process 0, with --num_processes and --process_id.')
flags.DEFINE_integer('num_processes', None, 'With --coordinator_address: the number of processes.')
flags.DEFINE_integer('process_id', None, 'With --coordinator_address: this process\'s index.')
flags.DEFINE_bool('overwrite', False, 'A workdir (or job stage) holding the record of another '
                  'config is moved aside to <dir>/replaced/<time>/ and trained anew (never deleted).')
flags.DEFINE_bool('debug', False, 'Show full tracebacks for configuration and setup errors.')
flags.mark_flags_as_required(['config', 'workdir'])

HELP_FLAGS = ('-h', '--help', '--helpshort', '-help', '-?')


def _config_path(argv: list[str]) -> str | None:
  for i, a in enumerate(argv):
    if a.startswith('--config='):
      return a.split('=', 1)[1]
    if a == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _config_module(spec: str):
  """The config file's module (the path part of `file.py:k=v`), imported as config_flags does."""
  path = spec.split(':', 1)[0]
  sys.path.insert(0, os.getcwd())
  module_spec = importlib.util.spec_from_file_location('_lkd_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def _config_help(spec: str) -> str:
  """The config file's module and get_config docstrings (they list its k=v arguments)."""
  path = spec.split(':', 1)[0]
  if not os.path.isfile(path):
    return f'(config file {path} not found)'
  module = _config_module(spec)
  docs = [module.__doc__ or '', getattr(module.get_config, '__doc__', '') or '']
  return f'config {path}:\n' + '\n'.join(d.strip('\n') for d in docs if d)


def help_text(argv: list[str]) -> str:
  """Usage, the flags, and the arguments of the config named on the command line (if any)."""
  text = [__doc__.strip(), '', FLAGS.module_help(sys.modules[__name__])]
  spec = _config_path(argv)
  text += ['', _config_help(spec) if spec else
           'Add --config=configs/NAME.py to list that config\'s k=v arguments.']
  return '\n'.join(text)


def _innermost(e: BaseException) -> BaseException:
  while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
    e = e.__cause__ or e.__context__
  return e


def _unknown_key(argv: list[str]) -> str:
  """Names the first --config.<key> override that the loaded config lacks, with the keys it has there."""
  spec = _config_path(argv)
  try:
    module = _config_module(spec)
    config = module.get_config(spec.split(':', 1)[1] if ':' in spec else None)
  except Exception:  # the config itself did not load: its own error is reported instead.
    return 'an unknown config key on the command line'
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    node, path = config, arg[len('--config.'):].split('=', 1)[0].split('.')
    for i, part in enumerate(path):
      if not hasattr(node, 'keys') or part not in node:
        where = '.'.join(path[:i]) or 'the config'
        known = ', '.join(sorted(node.keys())) if hasattr(node, 'keys') else 'none (not a group)'
        return f'unknown config key {".".join(path)!r} in {arg}; keys of {where}: {known}'
      node = node[part]
  return 'an unknown config key on the command line'


def flag_error(e: Exception, argv: list[str]) -> str:
  """One line for a failed command line: the bad flag or config key and what is known instead."""
  text = str(e)
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  if 'Traceback (most recent call last)' in text:  # config_flags quotes the config file's traceback.
    return f'{lines[0].rstrip(":")} {lines[-1]}'
  if 'Failed loading config file' in text:
    return f'cannot load the config file {_config_path(argv)}: {lines[-1]}'
  if isinstance(_innermost(e), (KeyError, AttributeError)):
    return _unknown_key(argv)
  return lines[0] if lines else type(e).__name__


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with --help exiting 0 and command-line errors as one line (no traceback)."""
  if any(a in HELP_FLAGS for a in argv[1:]):
    print(help_text(argv))
    sys.exit(0)
  try:
    rest = FLAGS(argv)
    FLAGS.config.keys()  # config_flags reports a bad file lazily: make its error surface here.
    return rest
  except Exception as e:  # absl flag errors and config_flags' errors in the config file or overrides.
    if '--debug' in argv:
      raise
    print(f'error: {flag_error(e, argv)}', file=sys.stderr)
    sys.exit(2)


def main(argv: list[str]) -> None:
  del argv
  logging.get_absl_handler().addFilter(cli.quiet_orbax)
  sys.unraisablehook = cli.quiet_closed_loop(sys.unraisablehook)
  from lkd_jax.kernels.host_malloc import tune_host_malloc
  malloc_tuned = tune_host_malloc(FLAGS.config.get('host_malloc', 'auto'))  # before JAX's threads start.
  import jax
  from lkd_jax.data import hide_accelerators_from_tf
  if FLAGS.multihost:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  hide_accelerators_from_tf()
  from lkd_jax import job, train
  from lkd_jax.errors import SetupError
  logging.info('JAX process %d/%d, %d local / %d global devices (%s); host malloc %s.',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.default_backend(), 'tuned' if malloc_tuned else 'system')
  try:
    job.run(FLAGS.config, FLAGS.workdir, overwrite=FLAGS.overwrite)
  except (SetupError, train.NonFiniteError) as e:  # input or divergence, not a bug: no traceback.
    if FLAGS.debug:
      raise
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
