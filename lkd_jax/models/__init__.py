"""Model zoo: teachers and students with the `model(x, train) -> (logits, feats)` contract."""
from lkd_jax.models.registry import create, names, register

__all__ = ['create', 'names', 'register']
