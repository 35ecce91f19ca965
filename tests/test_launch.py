"""launch/: the TPU pod and SLURM scripts' dry runs print per-host commands that lkd_jax.main accepts."""
import os
import shlex
import subprocess

import pytest
from absl import flags

from configs import slak_kd
from lkd_jax import main  # noqa: F401  (defines the flags checked below)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/slak_kd.py:teacher=slak_t,student=resnet50,method=kd,fsdp=4,compute_dtype=bfloat16'


def _dry_run(script: str, *args: str, **env: str) -> list[str]:
  out = subprocess.run(['bash', os.path.join(ROOT, 'launch', script), *args], cwd=ROOT,
                       env=dict(os.environ, DRY_RUN='1', **env), capture_output=True, text=True,
                       timeout=60)
  assert out.returncode == 0, out.stderr
  return out.stdout.splitlines()


@pytest.mark.parametrize('script, env, prefix', [
    ('tpu_pod.sh', {'TPU': 'my-v4-32', 'ZONE': 'us-central2-b', 'WORKERS': '4'}, 'worker'),
    ('slurm_gpu.sbatch', {'SLURM_NNODES': '2'}, 'node'),
])
def test_dry_run_prints_one_main_command_per_host(script, env, prefix):
  args = ('run',) if script == 'tpu_pod.sh' else ()
  lines = _dry_run(script, *args, 'gs://bucket/run', CONFIG, **env)
  hosts = [l for l in lines if l.startswith(prefix)]
  count = int(env.get('WORKERS', env.get('SLURM_NNODES')))
  assert [l.split(':', 1)[0] for l in hosts] == [f'{prefix} {i}' for i in range(count)]
  for line in hosts:
    argv = shlex.split(line.split(': ', 1)[1])
    argv = argv[argv.index('-m'):]
    assert argv[:2] == ['-m', 'lkd_jax.main'] and '--multihost' in argv
    names = [a[2:].split('=', 1)[0] for a in argv if a.startswith('--')]
    assert set(names) == {'multihost', 'workdir', 'config'}
    assert all(n in flags.FLAGS for n in names)
    values = dict(zip(argv[2:], argv[3:]))
    assert values['--workdir'] == 'gs://bucket/run' and values['--config'] == CONFIG
    c = slak_kd.get_config(CONFIG.split(':', 1)[1])
    assert (c.mesh.fsdp, c.compute_dtype) == (4, 'bfloat16')


def test_tpu_setup_dry_run_installs_the_tpu_build():
  lines = _dry_run('tpu_pod.sh', 'setup', TPU='t', ZONE='z')
  assert lines[0].startswith('gcloud compute tpus tpu-vm ssh t --zone z --worker=all')
  assert "pip install -q -U 'jax[tpu]'" in lines[1]
