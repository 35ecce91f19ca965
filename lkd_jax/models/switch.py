"""A named, validated, module-level choice of implementation (depthwise conv, dense conv, LayerNorm)."""
from __future__ import annotations


class ImplSwitch:
  """Holds the implementation every model traced afterwards uses; `choices[0]` is the default."""

  def __init__(self, what: str, choices: tuple[str, ...]):
    self.what, self.choices, self.value = what, choices, choices[0]

  def set(self, impl: str) -> None:
    """Selects `impl`, refusing names outside `choices`."""
    if impl not in self.choices:
      raise ValueError(f'Unknown {self.what} impl {impl!r}; choose one of {self.choices}.')
    self.value = impl

  def get(self) -> str:
    """The selected implementation."""
    return self.value
