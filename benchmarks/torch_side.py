"""The optional PyTorch side of the benchmark scripts: its import, threads, device and clock sync."""
from __future__ import annotations

import argparse
import os
from typing import Any, Callable

import jax

try:
  import torch
  TORCH_NOTE = None
except ModuleNotFoundError as e:  # the JAX side still runs.
  torch = None
  TORCH_NOTE = f'torch side skipped: {e} (pip install -e ".[torch]")'


def use_all_cores() -> int | None:
  """Lets torch use every core, as XLA:CPU does; returns its thread count (None without torch)."""
  if torch is None:
    return None
  torch.set_num_threads(os.cpu_count())
  return torch.get_num_threads()


def add_torch_device_arg(p: argparse.ArgumentParser) -> None:
  """--torch-device, as `torch_device` takes it."""
  p.add_argument('--torch-device', default='auto',
                 help="PyTorch's device: auto (CUDA where JAX runs on a GPU), cpu, cuda, cuda:N")


def torch_device(choice: str = 'auto') -> str | None:
  """The device PyTorch runs on ('auto': CUDA where JAX runs on a GPU and torch sees one, else the
  CPU), set up as JAX computes there; None without torch."""
  if torch is None:
    return None
  if choice == 'auto':
    choice = 'cuda' if jax.default_backend() == 'gpu' and torch.cuda.is_available() else 'cpu'
  if choice.startswith('cuda'):  # TF32 convs and matmuls: JAX's default precision for float32 there.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
  return choice


def leave_gpu_memory_for_torch(choice: str = 'auto', fraction: float = 0.45) -> None:
  """Caps JAX's GPU memory pool (75% of the card by default) so that PyTorch on CUDA in this process
  gets the rest; call before JAX's first operation. A fraction the user set, in either spelling, stays
  (setting both spellings is an error in JAX's CUDA plugin)."""
  if torch is None or choice == 'cpu' or not torch.cuda.is_available():
    return
  if not {'XLA_PYTHON_CLIENT_MEM_FRACTION', 'XLA_CLIENT_MEM_FRACTION'} & set(os.environ):
    os.environ['XLA_PYTHON_CLIENT_MEM_FRACTION'] = str(fraction)


def synced(fn: Callable[..., Any], device: str) -> Callable[..., Any]:
  """`fn`, then a wait for the device's queue (CUDA kernels run asynchronously to the host)."""
  if not device.startswith('cuda'):
    return fn

  def call(*args):
    out = fn(*args)
    torch.cuda.synchronize()
    return out
  return call


def torch_fields(device: str | None, skipped: str | None = None) -> dict[str, Any]:
  """A result's `torch` version, `torch_note` (why its PyTorch side is missing: `skipped`, or torch
  not installed) and `torch_device`."""
  return dict(torch=None if torch is None else torch.__version__,
              torch_note=skipped or TORCH_NOTE, torch_device=device)
