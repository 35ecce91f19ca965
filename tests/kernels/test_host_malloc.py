"""kernels/host_malloc.py: modes, the accelerator guess, and freed memory reused without page faults."""
import platform
import subprocess
import sys

import pytest

from lkd_jax.kernels import host_malloc

_FAULTS = """
import ctypes, resource, sys
from lkd_jax.kernels.host_malloc import tune_host_malloc
print(tune_host_malloc(sys.argv[1]))
libc = ctypes.CDLL('libc.so.6')
libc.malloc.argtypes, libc.malloc.restype = [ctypes.c_size_t], ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = int(sys.argv[2]) << 20
faults = []
for _ in range(3):  # n MB malloc'd, written, freed (numpy would ask the kernel for huge pages).
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc(n)
  ctypes.memset(p, 1, n)
  libc.free(p)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults[-1])
"""


def test_modes_and_accelerator_guess(monkeypatch):
  with pytest.raises(ValueError, match="Unknown host_malloc 'fast'.*'auto', 'tuned', 'system'"):
    host_malloc.tune_host_malloc('fast')
  assert host_malloc.tune_host_malloc('system') is False
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda,cpu')
  assert host_malloc.accelerator_expected()
  assert host_malloc.tune_host_malloc('auto') is False  # GPU hosts keep glibc's defaults.
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  assert not host_malloc.accelerator_expected()


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='mallopt is glibc-only')
def test_tuned_reuses_freed_memory_without_page_faults():
  def run(mode, mb):
    out = subprocess.run([sys.executable, '-c', _FAULTS, mode, str(mb)], capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1])
  applied, faults = run('tuned', 64)
  assert applied == 'True' and faults < 100
  applied, faults = run('system', 64)
  assert applied == 'False' and faults > 10_000  # a fresh mmap: every 4 KB page faults again.
  # A heap top above 2 GB (a SLaK-T step's heap peaks above 4 GB) is kept too: trimming is off,
  # not capped at mallopt's largest positive threshold.
  applied, faults = run('tuned', 2300)
  assert applied == 'True' and faults < 100
