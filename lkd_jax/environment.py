"""What ran a job: package versions and the host. Float rounding, so every number, depends on both
(XLA:CPU compiles for the host's vector ISA)."""
from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'orbax-checkpoint', 'tensorflow-datasets')


def _cpuinfo(key: str) -> str | None:
  """The first `key` field of /proc/cpuinfo (None where there is none)."""
  try:
    with open('/proc/cpuinfo') as f:
      return next(line.split(':', 1)[1].strip() for line in f if line.startswith(key))
  except (OSError, StopIteration):
    return None


def cpu_model() -> str:
  """The CPU's model name (from /proc/cpuinfo where there is one)."""
  return _cpuinfo('model name') or platform.processor() or platform.machine()


def cpu_isa() -> str:
  """The widest x86 vector ISA of the host ('avx512f', 'avx2', ...; else the machine name)."""
  flags = set((_cpuinfo('flags') or '').split())
  return next((f for f in ('avx512f', 'avx2', 'avx', 'sse4_2') if f in flags), platform.machine())


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def describe() -> dict[str, Any]:
  """Package versions, JAX's backend and devices, and the host CPU (model, ISA, cores)."""
  import jax
  return {'packages': {p: _version(p) for p in PACKAGES}, 'backend': jax.default_backend(),
          'devices': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
          'host': {'cpu': cpu_model(), 'isa': cpu_isa(), 'cores': os.cpu_count()}}
