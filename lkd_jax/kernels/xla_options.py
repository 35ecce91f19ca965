"""XLA compiler options for every jitted step: on CPU, convolutions stay with XLA's own (Eigen) kernels.

XLA:CPU (jaxlib 0.10) hands each convolution to YNNPACK by default, together with dots and
reductions (`xla_cpu_experimental_ynn_fusion_type`). YNNPACK's convolutions are the slow ones on the
2-core AVX-512 VMs (batch 8, fwd+bwd, Eigen vs YNNPACK): ResNet-50's 3x3 convs 29-51 vs 32-65 ms,
its 7x7/2 stem 47 vs 89, ConvNeXt's 7x7 depthwise conv in XLA's grouped form 590 vs 704; the
ResNet-50 train step 1.61 vs 1.77 s (benchmarks/README.md, "Dense convolutions"). Dots and reductions stay with
YNNPACK, which is faster there. The option is passed per jit (`jax.jit(..., compiler_options=...)`), as JAX advises,
rather than through XLA_FLAGS, which only counts before the backend starts.

The flag is experimental, and its default list differs across jaxlib versions, so the options are
used only where a probe compilation shows that they remove the convolutions from YNNPACK and change
nothing else; otherwise (other jaxlibs, GPU/TPU) `compiler_options()` is None: XLA's defaults.
"""
from __future__ import annotations

import collections
import functools
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

_YNN_FLAG = 'xla_cpu_experimental_ynn_fusion_type'
# This jaxlib's default list (dots, reductions, convolutions), convolutions left out.
_WITHOUT_CONVOLUTIONS = {_YNN_FLAG: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}


def _probe(x: jax.Array, w: jax.Array, m: jax.Array) -> tuple[jax.Array, ...]:
  """A convolution, a dot and a reduction, apart: one op of each kind YNNPACK may take."""
  y = lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y, m @ m, jnp.sum(m, axis=0)


def ynn_fusions(hlo: str) -> collections.Counter:
  """How many YNNPACK fusions an optimised HLO text holds, keyed by the set of ops inside each."""
  bodies = {m.group(1).lstrip('%'): m.group(2)
            for m in re.finditer(r'^(%?[\w.\-]+) (?:\(.*?\) -> .*? )?\{\n(.*?)\n\}', hlo, re.M | re.S)}
  return collections.Counter(
      tuple(sorted(set(re.findall(r'= \S+ ([a-z\-]+)\(', bodies[m.group(1).lstrip('%')]))
                   - {'parameter'}))
      for m in re.finditer(r' fusion\(.*?calls=(%?[\w.\-]+).*"__ynn_fusion"', hlo))


def _probe_fusions(options: dict[str, str] | None) -> collections.Counter:
  args = (jnp.ones((1, 16, 16, 32)), jnp.ones((3, 3, 32, 32)), jnp.ones((64, 64)))
  return ynn_fusions(jax.jit(_probe, compiler_options=options).lower(*args).compile().as_text())


def options_for(default: collections.Counter, changed: collections.Counter | None
                ) -> dict[str, Any] | None:
  """The options, given the probe's YNNPACK fusions compiled with XLA's defaults and with the options
  (`changed`; None where they did not compile): only where they take the convolutions off YNNPACK
  and change nothing else."""
  if changed is None or not any('convolution' in ops for ops in default):
    return None
  kept = collections.Counter({ops: n for ops, n in default.items() if 'convolution' not in ops})
  return dict(_WITHOUT_CONVOLUTIONS) if changed == kept else None


@functools.cache
def compiler_options(backend: str | None = None) -> dict[str, Any] | None:
  """`jax.jit` compiler_options for the library's steps on `backend` (default: JAX's), or None."""
  if (backend or jax.default_backend()) != 'cpu':
    return None
  default = _probe_fusions(None)
  if not any('convolution' in ops for ops in default):
    return None
  try:
    changed = _probe_fusions(_WITHOUT_CONVOLUTIONS)
  except Exception:  # noqa: BLE001  An older jaxlib without these enum values: keep its defaults.
    changed = None
  return options_for(default, changed)


def jit(fn: Callable, **kwargs) -> Callable:
  """`jax.jit` with `compiler_options()`: how the library's steps and the benchmarks compile."""
  return jax.jit(fn, compiler_options=compiler_options(), **kwargs)
