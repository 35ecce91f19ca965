"""python -m lkd_jax.plan: accelerator names to topologies, the step compiled from abstract inputs on
a CPU mesh, and a plan that does not fit refused with the fixes named."""
import importlib.util

import jax
import pytest

from lkd_jax import plan
from tests.conftest import tiny_run_config


def test_accelerator_types_map_to_topologies():
  names = {a: plan.topology_name(a)[0] for a in
           ('v4-8', 'v4-32', 'v4-128', 'v5p-8', 'v5e-8', 'v5e-16', 'v5litepod-256', 'v6e-8')}
  assert names == {'v4-8': 'v4:2x2x1', 'v4-32': 'v4:2x2x4', 'v4-128': 'v4:4x4x4',
                   'v5p-8': 'v5p:2x2x1', 'v5e-8': 'v5e:2x4', 'v5e-16': 'v5e:4x4',
                   'v5litepod-256': 'v5e:16x16', 'v6e-8': 'v6e:2x4'}
  assert plan.topology_name('v5e:4x4') == ('v5e:4x4', plan.CHIPS['v5e'])
  for bad, message in (('v9-8', 'Unknown accelerator type'), ('v4-24', 'not a power of two'),
                       ('v3:2x2', 'Unknown TPU generation')):
    with pytest.raises(ValueError, match=message):
      plan.topology_name(bad)


def _config():
  return tiny_run_config(method='kd', compute_dtype='bfloat16',
                         **{'teacher.name': 'resnet_atto', 'teacher.dtype': 'bfloat16',
                            'mesh.fsdp': 2})


def test_plan_on_a_cpu_mesh_reports_memory_and_flops_and_refuses_what_does_not_fit():
  with pytest.raises(plan.PlanDoesNotFit) as e:
    plan.plan(_config(), jax.devices(), 'cpu', hbm_gib=1e-4, peak_tflops=1.0, img_per_sec=100.0)
  r = e.value.record
  assert r['mesh'] == {'data': 4, 'fsdp': 2} and r['per_device_batch'] == 2
  assert r['compute_dtype'] == r['teacher_dtype'] == 'bfloat16'
  assert 1e-4 < r['per_device_gib'] < 1 and r['arguments_gib'] > 0
  # resnet_atto at 32 px: ~0.15 GFLOP forward per image for teacher and student together, the
  # backward twice the student's forward: 16 images give a few GFLOP, not zero or TFLOPs.
  assert 1e-4 < r['step_tflops'] < 0.1
  assert r['needed_mfu'] == pytest.approx(r['step_tflops'] * 1e12 * 100 / 16 / (8 * 1e12))
  message = str(e.value)
  assert 'GiB per device, more than the 0.0001 GiB' in message
  assert 'fsdp=4' in message and 'batch=8' in message and 'compute_dtype' not in message
  assert 'per device' in plan.describe(r, 'cpu')


@pytest.mark.skipif(importlib.util.find_spec('libtpu') is None,
                    reason='libtpu not installed (pip install -e ".[tpu-plan]")')
def test_plan_compiles_for_a_tpu_slice_on_this_host():
  name, chip = plan.topology_name('v5e-4')
  devices = plan.tpu_devices(name)
  assert len(devices) == 4 and 'TPU' in devices[0].device_kind
  # v4-8 is 4 chips of 2 TensorCores: one device per chip (megacore), as JAX sees the hardware.
  assert len(plan.tpu_devices(plan.topology_name('v4-8')[0])) == 4
  r = plan.plan(_config(), devices, 'tpu', hbm_gib=chip.hbm_gib, peak_tflops=chip.peak_tflops,
                img_per_sec=1000.0)
  assert r['mesh'] == {'data': 2, 'fsdp': 2} and 0 < r['per_device_gib'] < chip.hbm_gib
  assert 0 < r['needed_mfu'] < 1
