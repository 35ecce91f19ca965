"""A named, validated, module-level choice of implementation (depthwise conv, dense conv, LayerNorm)."""
from __future__ import annotations

import jax


class ImplSwitch:
  """Holds the implementation every model traced afterwards uses; `choices[0]` is the default.

  `auto`, if given, is the (CPU, GPU/TPU) pair that 'auto' resolves to when the choice depends on
  the platform only (the depthwise conv's also depends on shapes: depthwise.pick_auto).
  """

  def __init__(self, what: str, choices: tuple[str, ...], auto: tuple[str, str] | None = None):
    self.what, self.choices, self.value, self.auto = what, choices, choices[0], auto

  def set(self, impl: str) -> None:
    """Selects `impl`, refusing names outside `choices`."""
    if impl not in self.choices:
      raise ValueError(f'Unknown {self.what} impl {impl!r}; choose one of {self.choices}.')
    self.value = impl

  def get(self) -> str:
    """The selected implementation."""
    return self.value

  def resolve(self, impl: str | None = None, backend: str | None = None) -> str:
    """`impl` (default: the selected one), 'auto' replaced by its pick for `backend` (default: JAX's)."""
    impl = impl or self.value
    if impl == 'auto' and self.auto:
      cpu, other = self.auto
      impl = cpu if (backend or jax.default_backend()) == 'cpu' else other
    return impl
