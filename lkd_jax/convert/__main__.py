"""CLI: python -m lkd_jax.convert --model slak_t --src ckpt.pth --dst DIR [--num_classes 1000] [--key model]
     [--model_kwargs '{"kernel_size": [31, 29, 27, 13, 5]}']

Reads an official PyTorch checkpoint (.pth, read without torch and never running code from it; or .npz,
.safetensors), converts it by rule, refuses with one error listing every missing/unexpected key and shape
mismatch, and writes DIR with variables.npz + model.json, which
`lkd_jax.convert.load_teacher(DIR, model, num_classes)` reads back.
"""
from __future__ import annotations

import argparse
import sys

from lkd_jax import cli
from lkd_jax.convert.readers import CONTAINER_KEYS
from lkd_jax.convert.rules import ConversionError
from lkd_jax.convert.teacher import load_teacher, save_converted
from lkd_jax.errors import SetupError



def main(argv: list[str] | None = None) -> int:
  """Entry point; returns the process exit code."""
  p = argparse.ArgumentParser(prog='python -m lkd_jax.convert', description=__doc__.split('\n')[0])
  p.add_argument('--model', required=True, help='registered model name (python -m lkd_jax.models --list)')
  p.add_argument('--src', required=True, help='checkpoint: .pth/.pt, .npz or .safetensors')
  p.add_argument('--dst', required=True, help='output directory')
  p.add_argument('--num_classes', type=int, default=1000)
  p.add_argument('--key', default=None, help=f'container entry; default: first of {CONTAINER_KEYS} present')
  p.add_argument('--model_kwargs', type=cli.json_object, default={},
                 help='model constructor arguments as JSON, e.g. \'{"kernel_size": [31, 29, 27, 13, 5]}\' '
                      'for the released SLaK-T-31 (the same as teacher.kwargs in a training config)')
  a = p.parse_args(argv)
  try:
    model = load_teacher(a.src, a.model, a.num_classes, key=a.key, **a.model_kwargs)
  except ConversionError as e:
    print(f'error: {a.src} does not convert to {a.model}:\n{e}', file=sys.stderr)
    return 1
  except SetupError as e:  # unreadable file, unknown model or form: one line, no traceback.
    print(f'error: {e}', file=sys.stderr)
    return 1
  save_converted(model, a.dst, {'model': a.model, 'num_classes': a.num_classes, 'source': a.src,
                                'key': a.key, 'model_kwargs': a.model_kwargs})
  print(f'wrote {a.dst}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
