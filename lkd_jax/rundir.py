"""The run directory as a record: its config, whether it may be resumed or reused, moving it aside.

A run directory holds `config.json` (the config that produced its checkpoints), `checkpoints/` and,
once finished, `final_metrics.json` stamped with the config's digest. A requested config may resume
or reuse the directory only if it is the same run: the same config up to RESUME_NEUTRAL_KEYS, which
change how a run is logged, saved or fed, never its numbers. Anything else is refused before a step
runs, naming the differing keys; `--overwrite` moves the old record aside (never deletes it).
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Iterable, NamedTuple

import jax
import ml_collections
from absl import logging
from etils import epath

from lkd_jax.errors import SetupError

CONFIG_FILE = 'config.json'
FINAL_FILE = 'final_metrics.json'
REPLACED_DIR = 'replaced'
# Keys that do not change what a run computes: a resume may change them.
RESUME_NEUTRAL_KEYS = frozenset({
    'log_every', 'checkpoint_every', 'keep_checkpoints', 'eval_every', 'eval_every_epochs',
    'host_malloc', 'data.data_dir', 'data.threads', 'data.prefetch', 'data.cache_eval',
    'teacher.allow_partial'})
# Keys added after runs were recorded, at the value that keeps the old behaviour: left out of the
# identity, so that upgrading lkd_jax does not orphan a run recorded before the key existed.
ABSENT_DEFAULTS = {'target_accuracy': 0.0}
# How often a run evaluates decides where a target accuracy ends it.
EVAL_KEYS = frozenset({'eval_every', 'eval_every_epochs'})


class StageMismatch(SetupError):
  """A run directory holds the record of a different config."""


class Status(NamedTuple):
  kind: str  # 'fresh' | 'stale' (another config's record, nothing trained) | 'resume' | 'finished'
  result: dict[str, Any] | None = None  # final_metrics.json of a finished run


def flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def config_text(config: ml_collections.ConfigDict) -> str:
  """The config as the JSON text that config.json holds."""
  return config.to_json_best_effort(indent=2, sort_keys=True)


def identity(config_dict: dict[str, Any]) -> dict[str, Any]:
  """The flat config that decides a run's numbers (RESUME_NEUTRAL_KEYS and ABSENT_DEFAULTS
  dropped; the eval keys kept where a target accuracy depends on them), JSON-normalised."""
  flat = flatten(json.loads(json.dumps(config_dict, default=str)))
  neutral = RESUME_NEUTRAL_KEYS - (EVAL_KEYS if flat.get('target_accuracy') else frozenset())
  return {k: v for k, v in flat.items()
          if k not in neutral and not (k in ABSENT_DEFAULTS and v == ABSENT_DEFAULTS[k])}


def config_digest(config: ml_collections.ConfigDict) -> str:
  """A short hash of the config's identity: final_metrics.json records which run produced it."""
  text = json.dumps(identity(json.loads(config_text(config))), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def differing_keys(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
  """'key: stored -> requested' for every identity key that differs."""
  a, b = identity(stored), identity(requested)
  return [f'{k}: {a.get(k, "<absent>")!r} -> {b.get(k, "<absent>")!r}'
          for k in sorted(set(a) | set(b)) if a.get(k, '<absent>') != b.get(k, '<absent>')]


def _read_json(path: epath.Path) -> dict[str, Any] | None:
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise SetupError(f'{path} is not valid JSON ({e}); the run record is damaged. Move the '
                     'directory aside and rerun.') from None


def has_checkpoints(workdir: str) -> bool:
  """Whether workdir/checkpoints holds any saved step (finished or not)."""
  ckpt = epath.Path(workdir) / 'checkpoints'
  return ckpt.is_dir() and any(p.name.split('.')[0].isdigit() for p in ckpt.iterdir())


def inspect(config: ml_collections.ConfigDict, workdir: str) -> Status:
  """Whether `workdir` is fresh, a resumable run of `config`, or finished with it; StageMismatch if
  it holds the record of another config."""
  root = epath.Path(workdir)
  requested = json.loads(config_text(config))
  stored = _read_json(root / CONFIG_FILE)
  final = _read_json(root / FINAL_FILE)
  trained = final is not None or has_checkpoints(workdir)
  if not trained:
    return Status('stale' if stored and differing_keys(stored, requested) else 'fresh')
  if stored is None:
    problem = [f'it has {"final_metrics.json" if final else "checkpoints"} but no {CONFIG_FILE}']
  else:
    problem = differing_keys(stored, requested)
  if final is not None and not problem and final.get('config_digest') != config_digest(config):
    problem = [f'final_metrics.json was recorded under config digest {final.get("config_digest")}, '
               f'this config\'s is {config_digest(config)}']
  if problem:
    what = 'a finished run' if final is not None else 'the checkpoints of a run'
    raise StageMismatch(
        f'{workdir} holds {what} of a different config:\n  ' + '\n  '.join(problem) +
        '\nNothing was trained. Either use a new --workdir, or pass --overwrite to move the old '
        f'record aside into {REPLACED_DIR}/<time>/ beside it (nothing is deleted) and train anew.')
  return Status('finished', final) if final is not None else Status('resume')


def move_aside(root: str, names: Iterable[str] | None = None) -> epath.Path | None:
  """Moves root/<name> (default: every entry but the lock and replaced/) to root/replaced/<time>/."""
  from lkd_jax.lock import LOCK_FILE
  root = epath.Path(root)
  if not root.is_dir():
    return None
  if names is None:
    names = [p.name for p in root.iterdir() if p.name not in (LOCK_FILE, REPLACED_DIR)]
  entries = [root / n for n in names if (root / n).exists()]
  if not entries or jax.process_index() != 0:
    return None
  dest = root / REPLACED_DIR / time.strftime('%Y%m%d-%H%M%S')
  dest.mkdir(parents=True, exist_ok=True)
  for entry in entries:
    entry.rename(dest / entry.name)
  logging.warning('Moved the old record of %s (%s) aside to %s.', root,
                  ', '.join(e.name for e in entries), dest)
  return dest


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the locked config as config.json; a different one on resume goes beside it, never over it.

  Only process 0 writes (the workdir is shared by all hosts of a pod, e.g. on gs://).
  """
  if jax.process_index() != 0:
    return
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  text = config_text(config)
  path = workdir / CONFIG_FILE
  if path.exists():
    if path.read_text() == text:
      return
    path = workdir / f'config.{time.strftime("%Y%m%d-%H%M%S")}.json'
  path.write_text(text)


def write_final(result: dict[str, Any], workdir: str) -> None:
  """Writes final_metrics.json (process 0); it is written once, at the end of a run, never re-stamped."""
  if jax.process_index() == 0:
    (epath.Path(workdir) / FINAL_FILE).write_text(json.dumps(result, indent=2))


def read_final(workdir: str) -> dict[str, Any] | None:
  """final_metrics.json of a run directory, or None when the run has not finished."""
  return _read_json(epath.Path(workdir) / FINAL_FILE)


def read_config(workdir: str) -> dict[str, Any] | None:
  """config.json of a run directory as a dict, or None."""
  return _read_json(epath.Path(workdir) / CONFIG_FILE)
