"""Model zoo: teachers and students with the `model(x, train) -> (logits, feats)` contract."""
# Importing the family modules fills the registry (each registers its names with `register`).
from lkd_jax.models import convnext, cswin, resnet, slak, swin, vit  # noqa: F401
from lkd_jax.models.registry import create, names, register

__all__ = ['create', 'names', 'register']
