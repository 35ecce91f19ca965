"""The --multihost path for real: 2 processes x 4 CPU devices (jax.distributed on localhost, gloo
collectives) resume a distillation run and finish it as 1 process x 8 devices does."""
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from lkd_jax import checkpoints, models, rundir, train
from lkd_jax.convert import save_converted
from tests.conftest import tiny_run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCESSES, LOCAL_DEVICES = 2, 4
CONFIG_FROM_JSON = '''import json, ml_collections
def get_config(arg=None):
  return ml_collections.ConfigDict(json.load(open({path!r})))
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _launch(config_file: str, workdir: str, timeout: int = 600) -> list[subprocess.CompletedProcess]:
  """Runs lkd_jax.main --multihost as PROCESSES local processes; returns their outcomes."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={LOCAL_DEVICES}',
             PYTHONPATH=ROOT)
  address = f'localhost:{_free_port()}'
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'lkd_jax.main', '--multihost', f'--coordinator_address={address}',
       f'--num_processes={PROCESSES}', f'--process_id={i}', f'--config={config_file}',
       f'--workdir={workdir}'], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(PROCESSES)]
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=timeout)
      outs.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    tails = [p.communicate()[1][-2000:] for p in procs]
    raise AssertionError(f'no result within {timeout} s; the processes\' last words:\n' +
                         '\n---\n'.join(tails)) from None
  return outs


def _params(run_dir: str, step: int) -> dict:
  with checkpoints.manager(os.path.join(run_dir, 'checkpoints')) as mngr:
    return checkpoints.restore_raw(mngr, step)


@pytest.mark.heavy
def test_two_processes_resume_a_distillation_run_as_one_process_does(tmp_path):
  teacher = save_converted(models.create('resnet_atto', num_classes=10, seed=1), tmp_path / 'teacher',
                           {'model': 'resnet_atto', 'num_classes': 10})
  # shift=0: the synthetic pipeline's translation is seeded per process; everything else about a
  # global batch (order, mixup/cutmix on device) is the same whatever the process count.
  cfg = tiny_run_config(method='kd', total_steps=4, checkpoint_every=2, log_every=1,
                        **{'teacher.name': 'resnet_atto', 'teacher.checkpoint': str(teacher),
                           'mesh.fsdp': 2, 'data.shift': 0, 'teacher.check_batches': 0})
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  single = train.train_and_evaluate(cfg, one)  # 1 process x 8 devices, mesh (data=4, fsdp=2)

  # The 2-process run starts from the single run's step-2 checkpoint: a restore onto 2 processes.
  shutil.copytree(one, two, ignore=shutil.ignore_patterns('4', rundir.FINAL_FILE, 'events.*'))
  config_file = tmp_path / 'from_json.py'
  config_file.write_text(CONFIG_FROM_JSON.format(path=os.path.join(one, rundir.CONFIG_FILE)))
  outs = _launch(str(config_file), two)
  for i, out in enumerate(outs):
    assert out.returncode == 0, f'process {i}:\n{out.stderr[-4000:]}'
    assert f'JAX process {i}/{PROCESSES}, {LOCAL_DEVICES} local / 8 global devices' in out.stderr
  assert 'Resumed from' in outs[0].stderr and 'at step 2.' in outs[0].stderr

  multi = rundir.read_final(two)
  for key in ('loss', 'accuracy', 'top5'):
    np.testing.assert_allclose(multi[key], single[key], rtol=1e-4, err_msg=key)
  assert multi['count'] == single['count'] == cfg.data.num_eval
  a, b = _params(one, 4), _params(two, 4)
  assert int(b['step']) == 4
  for x, y in zip(*map(lambda t: jax.tree.leaves(t['params']), (a, b))):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)

  # The teacher's cost: in the log of each run and in final_metrics.json.
  assert 'Teacher cost: forward' in outs[0].stderr and 'measured' in outs[0].stderr
  for record in (single['teacher_cost'], multi['teacher_cost']):
    assert 0 < record['teacher_flop_share'] < 1 and 0 < record['teacher_time_share']
    assert record['step_gflops'] > record['teacher_gflops'] > 0
    assert record['teacher_ms'] > 0 and record['step_ms'] > 0
  assert json.loads(json.dumps(single['teacher_cost'])) == rundir.read_final(one)['teacher_cost']
