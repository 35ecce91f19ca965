"""CLI: effective receptive fields (RepLKNet/SLaK method, lkd_jax/analysis/erf.py) of one model, or
of several runs side by side.

    python -m lkd_jax.erf --checkpoint runs/slakt_r50_kd --images ../shared/data/imagenet-sample \\
        --size 1024 --out runs/slakt_r50_kd/erf
    python -m lkd_jax.erf --model slak_t --checkpoint SLaK_tiny.pth --images tfds:imagenet2012:validation \\
        --out erf/slak_t
    python -m lkd_jax.erf --compare runs/r50_ce runs/slakt_r50_kd --images ../shared/data/imagenet-sample \\
        --out erf_students.png

One model: writes OUT/erf.npy (the mean raw map, float32 S x S), OUT/erf.json (model, checkpoint,
S, images used / skipped, and per threshold the side and area ratio (side / S)^2 of the
high-contribution square; the SLaK copy of the reference divides the side by a fixed 1024, which is
the same only at S = 1024) and OUT/erf.png (the normalised map, area ratios in the caption).
`--checkpoint` is a run directory (its trained model; OUT defaults to RUN/erf), a converted
directory or an official file (with --model); without it, --model is randomly initialised.

`--compare PATH...`: each PATH is an ERF output directory, or a run directory whose ERF is in
RUN/erf (computed there first, from --images, when absent or with --recompute; a stored one that
differs from a given --size, --images or --num_images is refused, never silently reused). Writes
OUT (the maps side by side on one colour scale, titled teacher → student (method)) and beside it
OUT's stem .json and .md (the table, also printed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import jax
import numpy as np

from lkd_jax import cli, kernels
from lkd_jax import teacher as teacher_lib
from lkd_jax.analysis import erf as erf_lib
from lkd_jax.analysis import plots, runs
from lkd_jax.errors import SetupError

NPY, JSON, PNG = 'erf.npy', 'erf.json', 'erf.png'
DEFAULT_SIZE = 1024
DEFAULT_NUM_IMAGES = 50  # the reference's default



def parser() -> argparse.ArgumentParser:
  """The CLI's arguments."""
  p = argparse.ArgumentParser(prog='python -m lkd_jax.erf',
                              description=' '.join(__doc__.split('\n\n')[0].split()),
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split('\n\n', 1)[1])
  p.add_argument('--compare', nargs='+', metavar='PATH', default=None,
                 help='ERF output or run directories to show side by side')
  p.add_argument('--model', default=None, help='registered model name (python -m lkd_jax.models --list)')
  p.add_argument('--checkpoint', default=None,
                 help='run directory, converted directory or .pth/.npz/.safetensors file')
  p.add_argument('--num_classes', type=int, default=1000, help='for a converted dir or file')
  p.add_argument('--model_kwargs', type=cli.json_object, default={},
                 help='model constructor arguments as JSON, for a converted dir, file or random init')
  p.add_argument('--inference_form', default='branches', help="SLaK: 'branches', 'merged', 'merged_decom'")
  p.add_argument('--seed', type=int, default=0, help='random initialisation without --checkpoint')
  p.add_argument('--images', default=None,
                 help='folder of JPEG/PNG files, tfds:NAME[:SPLIT] or synthetic[:SPLIT]')
  p.add_argument('--data_dir', default=None, help='TFDS data_dir')
  p.add_argument('--num_images', type=int, default=None,
                 help=f'the first N images (default {DEFAULT_NUM_IMAGES})')
  p.add_argument('--size', type=int, default=None, help=f'S: images resized to S x S (default {DEFAULT_SIZE})')
  p.add_argument('--batch_size', type=int, default=None, help='default: one image per device')
  p.add_argument('--out', default=None, help='output directory (one model) or PNG file (--compare)')
  p.add_argument('--recompute', action='store_true',
                 help='--compare: compute the ERF of each run directory anew (into RUN/erf)')
  return p


def _run_label(checkpoint: str | None, record: dict[str, Any]) -> str:
  """The figure title: teacher → student (method) for a run directory, else the model (and form)."""
  if checkpoint and teacher_lib.is_run_dir(checkpoint):
    info = runs.describe(checkpoint)
    return runs.label(*info.key)
  name = record.get('model', '?')
  return f'{name} (random init)' if record.get('kind') == 'random_init' else name


def _kernels() -> kernels.Kernels:
  """The forms `auto` picks on this platform (kernels.resolve), as a run computes with."""
  return kernels.resolve({}, jax.default_backend())


def load(a: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
  """The model the arguments name, and the record of what was loaded."""
  if a.checkpoint:
    return teacher_lib.load_model(a.checkpoint, a.model, a.num_classes,
                                  inference_form=a.inference_form, kernels=_kernels(),
                                  **a.model_kwargs)
  if not a.model:
    raise SetupError('Name --checkpoint (run dir, converted dir or file) or --model (random init).')
  from lkd_jax import models
  print(f'erf: no --checkpoint: {a.model} randomly initialised (seed {a.seed}).', file=sys.stderr)
  model = models.create(a.model, num_classes=a.num_classes, seed=a.seed, kernels=_kernels(),
                        **a.model_kwargs)
  return model, {'kind': 'random_init', 'model': a.model, 'seed': a.seed}


def compute_one(a: argparse.Namespace, out: str) -> dict[str, Any]:
  """Computes the ERF the arguments describe and writes erf.npy, erf.json and erf.png into `out`."""
  if not a.images:
    raise SetupError('Name the images: --images FOLDER, tfds:NAME[:SPLIT] or synthetic[:SPLIT].')
  size, num_images = a.size or DEFAULT_SIZE, a.num_images or DEFAULT_NUM_IMAGES
  model, record = load(a)
  images, num = erf_lib.image_source(a.images, num_images, a.data_dir)
  result = erf_lib.compute(model, images, num, size, batch_size=a.batch_size)
  areas = erf_lib.high_contribution_area(result.erf_map)
  info = {'label': _run_label(a.checkpoint, record), 'model': record.get('model'),
          'checkpoint': a.checkpoint, 'checkpoint_record': record, 'size': size,
          'images': a.images, 'images_requested': num_images, 'images_used': result.used,
          'images_skipped': result.skipped, 'feature': erf_lib.FEATURE, 'areas': areas}
  write_one(result.erf_map, info, out)
  return info


def write_one(erf_map: np.ndarray, info: dict[str, Any], out: str) -> None:
  """erf.npy, erf.json and erf.png of one ERF into directory `out`."""
  os.makedirs(out, exist_ok=True)
  np.save(os.path.join(out, NPY), erf_map.astype(np.float32))
  with open(os.path.join(out, JSON), 'w') as f:
    json.dump(info, f, indent=2)
  plots.erf_figure([erf_lib.normalise(erf_map)], [info['label']], [caption(info)],
                   os.path.join(out, PNG))


def caption(info: dict[str, Any]) -> str:
  """Area ratios and the image count, for under a map."""
  return (f"area ratio {erf_lib.format_areas(info['areas'])}\n"
          f"S={info['size']}, {info['images_used']} images")


def find(path: str) -> str | None:
  """The ERF output directory of `path`: itself, or path/erf, whichever holds erf.npy + erf.json."""
  for d in (path, os.path.join(path, 'erf')):
    if os.path.exists(os.path.join(d, NPY)) and os.path.exists(os.path.join(d, JSON)):
      return d
  return None


def read(erf_dir: str) -> tuple[np.ndarray, dict[str, Any]]:
  """The map and erf.json of an ERF output directory."""
  with open(os.path.join(erf_dir, JSON)) as f:
    info = json.load(f)
  return np.load(os.path.join(erf_dir, NPY)), info


def _differences(info: dict[str, Any], a: argparse.Namespace) -> list[str]:
  """The requested settings (those given) that a stored erf.json was not computed with."""
  asked = {'size': a.size, 'images': a.images, 'images_requested': a.num_images}
  return [f'{k} {info.get(k)!r} (asked: {v!r})' for k, v in asked.items()
          if v is not None and info.get(k) != v]


def resolve(path: str, a: argparse.Namespace) -> tuple[np.ndarray, dict[str, Any]]:
  """One --compare entry: its stored ERF (if it matches --size/--images/--num_images where given,
  and --recompute is not set), or one computed into RUN/erf."""
  found = find(path)
  is_run = teacher_lib.is_run_dir(path)
  if found and not (a.recompute and is_run):
    erf_map, info = read(found)
    differences = _differences(info, a)
    if differences:
      fix = ('pass --recompute to compute it anew into ' + os.path.join(path, 'erf') if is_run else
             'drop those arguments or compute a matching one with python -m lkd_jax.erf')
      raise SetupError(f'{found} holds an ERF with {", ".join(differences)}: {fix}.')
    if is_run:  # the run's own record names it, even for an older erf.json
      info['label'] = runs.label(*runs.describe(path).key)
    return erf_map, info
  if not is_run:
    raise SetupError(f'{path} holds no {NPY} + {JSON} (nor {path}/erf) and is not a run directory.')
  args = argparse.Namespace(**{**vars(a), 'checkpoint': path, 'model': None})
  out = os.path.join(path, 'erf')
  print(f'erf: computing the ERF of {path} into {out}', file=sys.stderr)
  info = compute_one(args, out)
  return read(out)[0], info


def table(infos: list[dict[str, Any]]) -> str:
  """Markdown: one row per ERF, area ratio (%) and side per threshold."""
  thresholds = [r['threshold'] for r in infos[0]['areas']]
  cell = lambda r: 'none' if r['side'] is None else f"{100 * r['area_ratio']:.2f}% ({r['side']} px)"
  lines = ['| model | S | images | ' + ' | '.join(f't={t:g}' for t in thresholds) + ' |',
           '|---|---|---|' + '---|' * len(thresholds)]
  for info in infos:
    lines.append(f"| {info['label']} | {info['size']} | {info['images_used']} | "
                 + ' | '.join(cell(r) for r in info['areas']) + ' |')
  return '\n'.join(lines) + '\n'


def compare(a: argparse.Namespace) -> list[dict[str, Any]]:
  """The --compare figure, JSON and Markdown; returns the entries' erf.json records."""
  if not a.out:
    raise SetupError('--compare needs --out FIGURE.png')
  entries = [resolve(p, a) for p in a.compare]
  infos = [info for _, info in entries]
  if len({info['size'] for info in infos}) > 1:
    print('erf: the maps have different sizes S; their area ratios are each of its own S.',
          file=sys.stderr)
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  plots.erf_figure([erf_lib.normalise(m) for m, _ in entries], [i['label'] for i in infos],
                   [caption(i) for i in infos], a.out)
  stem = os.path.splitext(a.out)[0]
  md = table(infos)
  with open(stem + '.json', 'w') as f:
    json.dump([{**i, 'path': p} for i, p in zip(infos, a.compare)], f, indent=2)
  with open(stem + '.md', 'w') as f:
    f.write(md)
  print(md, end='')
  print(f'wrote {a.out}, {stem}.json, {stem}.md')
  return infos


def compare_runs(paths: Sequence[str], out: str, images: str | None = None, *,
                 size: int | None = None, num_images: int | None = None, recompute: bool = False,
                 batch_size: int | None = None, data_dir: str | None = None) -> list[dict[str, Any]]:
  """`--compare` from Python: the ERFs of run (or ERF output) directories side by side in the PNG
  `out`, with its .json and .md beside it; returns each entry's erf.json record (label, areas, ...).

  A run directory's ERF is computed into RUN/erf from `images` (as --images) when absent or with
  `recompute`; a stored one computed with another `size`, `images` or `num_images` is refused.
  """
  a = parser().parse_args(['--compare', *paths, '--out', out])
  a.__dict__.update(images=images, size=size, num_images=num_images, recompute=recompute,
                    batch_size=batch_size, data_dir=data_dir)
  return compare(a)


def main(argv: list[str] | None = None) -> int:
  """Entry point; returns the process exit code."""
  a = parser().parse_args(argv)
  try:
    if a.compare:
      compare(a)
      return 0
    out = a.out or (os.path.join(a.checkpoint, 'erf')
                    if a.checkpoint and teacher_lib.is_run_dir(a.checkpoint) else None)
    if not out:
      raise SetupError('Name the output directory: --out DIR.')
    info = compute_one(a, out)
  except SetupError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(table([info]), end='')
  print(f'wrote {out}/{{{NPY},{JSON},{PNG}}}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
