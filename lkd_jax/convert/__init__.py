"""PyTorch state_dict -> Flax NNX variables by rule from module names (DESIGN §3); CLI `python -m lkd_jax.convert`."""
from lkd_jax.convert.readers import read_checkpoint, unwrap
from lkd_jax.convert.rules import ConversionError, convert_into, plan, to_state_dict
from lkd_jax.convert.teacher import load_teacher, save_converted

__all__ = ['ConversionError', 'convert_into', 'load_teacher', 'plan', 'read_checkpoint',
           'save_converted', 'to_state_dict', 'unwrap']
