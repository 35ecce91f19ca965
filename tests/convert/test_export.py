"""convert.to_state_dict: a model as an official-layout state_dict, read back exactly by the converter."""
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from lkd_jax import models
from lkd_jax.convert import load_teacher, to_state_dict
from lkd_jax.convert.rules import variables_of



def test_to_state_dict_round_trips_through_a_safetensors_file(tmp_path):
  model = models.create('resnet_atto', num_classes=10, seed=3)
  sd = to_state_dict(model)
  assert sd['fc.weight'].shape[0] == 10                              # torch's (out, in)
  assert any(k.endswith('running_var') for k in sd)                    # BatchNorm statistics too
  save_file(sd, str(tmp_path / 'teacher.safetensors'))
  loaded = load_teacher(str(tmp_path / 'teacher.safetensors'), 'resnet_atto', 10)
  want = dict(nnx.to_flat_state(variables_of(model)))
  got = dict(nnx.to_flat_state(variables_of(loaded)))
  assert want.keys() == got.keys()
  for path, var in want.items():
    np.testing.assert_array_equal(got[path].get_value(), var.get_value(), err_msg=str(path))
