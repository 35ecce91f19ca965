"""glibc malloc settings for XLA:CPU: keep freed host memory for the next step instead of unmapping it.

XLA:CPU allocates each execution's buffers with malloc and frees them after it. glibc serves
allocations over its mmap threshold (at most 32 MB) with fresh mmap'd pages, and the per-thread
arenas XLA's worker threads use give big blocks back to the kernel too, so every step page-faults
its whole working set again: 285k minor faults (1.1 GB) per ConvNeXt-T -> ResNet-50 KD step at
batch 8 (benchmarks/results/kd_step_cpu_malloc_system.json). One arena, no mmap and no trimming
keep freed memory for the next step; the process keeps its peak footprint. Trimming must be off,
not just capped: a 2 GB threshold (mallopt's largest positive value) still let a SLaK-T step, whose
heap peaks above 4 GB, give its top back and fault 281k pages per step in some runs.
PyTorch's and TensorFlow's tuning guides get the same effect by preloading jemalloc or tcmalloc;
mallopt needs no extra library and can be set from Python, as long as it runs before JAX starts its
threads (arenas are bound to threads at their first malloc).
The catch is that a later program runs on the heap an earlier one left: after the demo job's
teacher stage, its student and distilled stages made 10-23% fewer steps/s than in a fresh process,
while the teacher stage made 2-20% more than with glibc's defaults (benchmarks/README.md, Host malloc tuned).
One arena serialises malloc across threads: fine for XLA's few large blocks, but on a many-core
CPU host whose tf.data pipeline is malloc-bound, `host_malloc='system'` may be faster.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import platform

HOST_MALLOC_MODES = ('auto', 'tuned', 'system')
# mallopt parameters, <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_NO_TRIM = -1  # man mallopt: 'Setting M_TRIM_THRESHOLD to -1 disables trimming completely.'


def accelerator_expected() -> bool:
  """Whether JAX will likely run on an accelerator: JAX_PLATFORMS names one, or a GPU/TPU plugin is
  installed (read without starting a backend, which would start JAX's threads)."""
  platforms = os.environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return any(p.strip() not in ('', 'cpu') for p in platforms.split(','))
  if importlib.metadata.entry_points(group='jax_plugins'):
    return True
  return any(importlib.util.find_spec(m) is not None for m in ('libtpu', 'jax_plugins'))


def tune_host_malloc(mode: str = 'auto') -> bool:
  """Applies the settings above when `mode` is 'tuned', or 'auto' on a host where JAX runs on CPU;
  returns whether they were applied. Call before JAX's first computation."""
  if mode not in HOST_MALLOC_MODES:
    raise ValueError(f'Unknown host_malloc {mode!r}; choose one of {HOST_MALLOC_MODES}.')
  if mode == 'system' or (mode == 'auto' and accelerator_expected()):
    return False
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    return False  # mallopt is glibc's; other allocators keep their own defaults.
  libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
  return all(libc.mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NO_TRIM)))
