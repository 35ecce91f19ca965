"""FSDP: (data=2, fsdp=4) computes what (data=8, fsdp=1) does, holds a quarter of each large tensor
per device, and its checkpoints restore onto the other mesh shape."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lkd_jax import checkpoints, sharding, train
from lkd_jax.errors import SetupError
from tests.conftest import run_kd_steps, tiny_run_config


def _run(fsdp: int, steps: int = 2):
  mesh = sharding.make_mesh(fsdp=fsdp)
  cfg = tiny_run_config(method='kd', ema_decay=0.9, **{'teacher.name': 'resnet_atto'})
  return (mesh, *run_kd_steps(cfg, mesh, steps))


def _largest(tree):
  return max(jax.tree.leaves(tree), key=lambda x: x.size)


@pytest.mark.heavy
def test_fsdp_matches_data_parallel_shards_large_tensors_and_restores_across_meshes(tmp_path):
  mesh4, s4, t4, loss4 = _run(fsdp=4)
  mesh1, s1, _, loss1 = _run(fsdp=1)
  assert dict(mesh4.shape) == {'data': 2, 'fsdp': 4} and dict(mesh1.shape) == {'data': 8, 'fsdp': 1}
  np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(jax.device_get(s4)), jax.tree.leaves(jax.device_get(s1))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

  # The largest tensor (a 3x3x128x128 kernel) of the student, its Adam moments, its EMA and of the
  # teacher: a quarter per device, split on the 128 output channels; under fsdp=1 a full copy.
  big = _largest(s4.params)
  mu = _largest(s4.opt_state)
  for x in (big, mu, _largest(s4.ema['params']), _largest(t4)):
    assert x.shape == (3, 3, 128, 128) and x.sharding.spec == P(None, None, None, 'fsdp')
    assert sharding.addressable_fraction(x) == 0.25
    assert {s.data.shape for s in x.addressable_shards} == {(3, 3, 128, 32)}
  assert sharding.addressable_fraction(_largest(s1.params)) == 1.0
  small = s4.params['student']['fc']['bias'][...]
  assert small.sharding.spec == P() and sharding.addressable_fraction(small) == 1.0

  # Written under (2, 4), read back under (8, 1) and the other way: same values, target's sharding.
  for name, saved, target in (('fsdp4', s4, s1), ('fsdp1', s1, s4)):
    with checkpoints.manager(str(tmp_path / name)) as mngr:
      checkpoints.save(mngr, 2, saved, force=True)
      checkpoints.wait(mngr)
      restored = checkpoints.restore(mngr, target)
    for a, b, t in zip(*map(jax.tree.leaves, (restored, saved, target))):
      assert a.sharding.is_equivalent_to(t.sharding, a.ndim)
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

def test_param_rule_and_bad_fsdp_size():
  assert sharding.param_spec((3, 3, 128, 128), 4) == P(None, None, None, 'fsdp')
  assert sharding.param_spec((1024, 96), 4) == P('fsdp')          # the largest divisible dim
  assert sharding.param_spec((1000, 768), 16) == P(None, 'fsdp')  # 1000 % 16 != 0
  assert sharding.param_spec((1001, 17), 4) == P()                # nothing divides: replicated
  assert sharding.param_spec((256,), 4) == P()                    # small: replicated
  assert sharding.param_spec((3, 3, 128, 128), 1) == P()
  with pytest.raises(ValueError, match=r'mesh.fsdp=3 must be a positive divisor of the 8 devices'):
    sharding.make_mesh(fsdp=3)
  with pytest.raises(SetupError, match=r'mesh.fsdp=3'):
    train.validate(tiny_run_config(**{'mesh.fsdp': 3}), '/nonexistent/run')
