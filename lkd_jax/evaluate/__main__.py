"""CLI: evaluate any checkpoint on a suite of sets; writes OUT/eval.json + OUT/eval.md, prints the table.

    python -m lkd_jax.evaluate --checkpoint runs/slakt_r50_kd \\
        --suite imagenet,imagenet_v2,imagenet_real,imagenet_a,imagenet_r,imagenet_sketch,imagenet_c \\
        --out runs/slakt_r50_kd/eval
    python -m lkd_jax.evaluate --checkpoint /tmp/lkd_demo/distilled \\
        --teacher slak_atto --teacher_checkpoint /tmp/lkd_demo/teacher      # embedded task

--checkpoint: an lkd_jax run directory (its raw and, when saved, EMA weights; model, classes and,
for the embedded task, the suite and data from its config.json), a converted directory or an official
.pth/.npz/.safetensors file (then --model and, if not 1000, --num_classes).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from lkd_jax import cli
from lkd_jax.errors import SetupError


def _csv(text: str) -> tuple[str, ...]:
  return tuple(s.strip() for s in text.split(',') if s.strip())



def parser() -> argparse.ArgumentParser:
  """The CLI's arguments."""
  p = argparse.ArgumentParser(prog='python -m lkd_jax.evaluate', description=__doc__.split('\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--checkpoint', required=True)
  p.add_argument('--model', default='', help='model name (needed unless --checkpoint is a run dir)')
  p.add_argument('--model_kwargs', type=cli.json_object, default={})
  p.add_argument('--num_classes', type=int, default=1000)
  p.add_argument('--inference_form', default='branches', help='SLaK: branches | merged | merged_decom')
  p.add_argument('--suite', type=_csv, default=(),
                 help='comma-separated sets: imagenet, imagenet_v2, imagenet_real, imagenet_a, '
                      'imagenet_r, imagenet_sketch, imagenet_c, synthetic, synthetic_c (default: '
                      'synthetic,synthetic_c for an embedded-task run, else imagenet)')
  p.add_argument('--out', default='', help='output directory (default: CHECKPOINT/eval for a run dir)')
  p.add_argument('--weights', type=_csv, default=('raw', 'ema'), help='run dirs: raw, ema or both')
  p.add_argument('--teacher', default='', help='teacher model name: adds agreement and KL')
  p.add_argument('--teacher_checkpoint', default='')
  p.add_argument('--teacher_kwargs', type=cli.json_object, default={})
  p.add_argument('--teacher_inference_form', default='branches')
  p.add_argument('--data_dir', default='')
  p.add_argument('--image_size', type=int, default=0, help='eval size S (default: the run\'s, else 224)')
  p.add_argument('--crop_pct', type=float, default=0.0, help='default: the run\'s, else 0.875')
  p.add_argument('--interpolation', default='')
  p.add_argument('--batch_size', type=int, default=0, help='global eval batch (default: the run\'s, else 256)')
  p.add_argument('--num_eval', type=int, default=0, help='only the first N examples of each set')
  p.add_argument('--corruptions', type=_csv, default=(), help='subset of the corrupted suites')
  p.add_argument('--severities', type=_csv, default=('1', '2', '3', '4', '5'))
  p.add_argument('--extra_corruptions', action='store_true',
                 help='imagenet_c: also speckle_noise, gaussian_blur, spatter, saturate')
  p.add_argument('--v2_variant', default='matched-frequency')
  p.add_argument('--mock', type=int, default=0, help='N > 0: N mock examples per TFDS set (tests)')
  p.add_argument('--debug', action='store_true', help='show tracebacks of setup errors')
  return p


def _options(a: argparse.Namespace, run_config: dict | None):
  from lkd_jax.evaluate import runner
  import ml_collections
  o = (runner.options_from_config(ml_collections.ConfigDict(run_config)) if run_config
       else runner.options())
  given = dict(data_dir=a.data_dir, image_size=a.image_size, crop_pct=a.crop_pct,
               interpolation=a.interpolation, batch_size=a.batch_size, num_eval=a.num_eval,
               mock=a.mock)
  o.update({k: v for k, v in given.items() if v})
  if a.image_size:
    o.synthetic_image_size = a.image_size
  o.update(corruptions=a.corruptions, severities=tuple(int(s) for s in a.severities),
           extra_corruptions=a.extra_corruptions, v2_variant=a.v2_variant)
  return o


def _default_suite(run_config: dict | None) -> tuple[str, ...]:
  if run_config and run_config.get('data', {}).get('source') == 'synthetic':
    return ('synthetic', 'synthetic_c')
  return ('imagenet',)


def _versions() -> dict[str, str]:
  import importlib.metadata as md
  out = {}
  for pkg in ('jax', 'flax', 'tensorflow-datasets', 'tensorflow', 'numpy'):
    try:
      out[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      pass
  return out


def run(a: argparse.Namespace) -> dict:
  """Loads, evaluates and writes; returns the eval.json dict."""
  from lkd_jax.data import hide_accelerators_from_tf
  hide_accelerators_from_tf()
  import jax
  from lkd_jax.evaluate import results, runner, sets
  loaded = runner.load(a.checkpoint, a.model, a.num_classes, model_kwargs=a.model_kwargs,
                       inference_form=a.inference_form, ema='ema' in a.weights)
  loaded = loaded._replace(weights=tuple(w for w in loaded.weights
                                         if w.label in a.weights or w.label == 'checkpoint'))
  o = _options(a, loaded.run_config)
  suite = a.suite or _default_suite(loaded.run_config)
  eval_sets = sets.expand(suite, corruption_names=o.corruptions, severities=o.severities,
                          extra_corruptions=o.extra_corruptions, v2_variant=o.v2_variant)
  teacher, teacher_source = None, None
  if a.teacher_checkpoint:
    t = runner.load(a.teacher_checkpoint, a.teacher, loaded.num_classes,
                    model_kwargs=a.teacher_kwargs, inference_form=a.teacher_inference_form,
                    ema=False)
    teacher, teacher_source = runner.as_teacher(t), {'model': t.name, **t.source}
  print(f'evaluating {loaded.name} ({", ".join(w.label for w in loaded.weights)} weights) on '
        f'{len(eval_sets)} sets, {jax.device_count()} {jax.default_backend()} devices',
        file=sys.stderr)
  t0 = time.time()
  out = runner.evaluate(loaded, eval_sets, o, teacher=teacher)
  result = {'model': loaded.name, 'checkpoint': a.checkpoint, 'source': loaded.source,
            'teacher': teacher_source, 'suite': list(suite), 'options': o.to_dict(),
            'weights_evaluated': {w.label: _weights_note(w.label) for w in loaded.weights},
            'data_dirs': out['data_dirs'], 'versions': _versions(),
            'seconds': round(time.time() - t0, 1), 'weights': out['weights']}
  out_dir = a.out or (os.path.join(a.checkpoint, 'eval') if loaded.run_config else '')
  if out_dir and jax.process_index() == 0:
    results.write(result, out_dir)
    print(f'wrote {out_dir}/eval.json and eval.md', file=sys.stderr)
  if jax.process_index() == 0:
    print(results.to_markdown(result), end='')
  return result


def _weights_note(label: str) -> str:
  return {'raw': 'the trained weights at the latest checkpoint',
          'ema': 'the exponential moving average of the weights (config.ema_decay)',
          'checkpoint': 'the weights stored in the checkpoint file'}[label]


def main(argv: list[str] | None = None) -> int:
  """Entry point; returns the process exit code."""
  a = parser().parse_args(argv)
  try:
    run(a)
  except SetupError as e:
    if a.debug:
      raise
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
