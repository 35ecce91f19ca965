"""Config files and `file.py:k=v` arguments."""
import pytest
from absl import flags
from ml_collections import config_flags

from configs import common, demo
from lkd_jax import job


def test_parse_arg_types_and_bare_flags():
  a = common.parse_arg('steps=12,method=nkd,lr=0.5,tiny', steps=1, method='kd', lr=1.0, tiny=False)
  assert (a.steps, a.method, a.lr, a.tiny) == (12, 'nkd', 0.5, True)
  assert common.parse_arg(None, steps=3).steps == 3


def test_parse_arg_errors_name_the_problem():
  with pytest.raises(ValueError, match="Unknown config argument 'stepz'.*steps"):
    common.parse_arg('stepz=3', steps=1)
  with pytest.raises(ValueError, match='is not a int'):
    common.parse_arg('steps=three', steps=1)


def test_demo_config_via_config_flags_path_syntax():
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'test', flag_values=fv, lock_config=True)
  fv(['prog', f'--config={demo.__file__}:method=kd,seed=2,steps=10'])
  c = fv.config
  assert c.seed == 2 and c.stages == ('teacher', 'student', 'distilled')
  assert c.stage_overrides.distilled.method == 'kd'
  assert c.stage_overrides.student.total_steps == 10


def test_demo_teacher_depthwise_only_changes_the_distilled_stage():
  default, other = demo.get_config(None), demo.get_config('teacher_depthwise=fft')
  assert job.stage_config(other, 'distilled').depthwise_impl == 'fft'
  for stage in ('teacher', 'student'):
    assert job.stage_config(other, stage) == job.stage_config(default, stage)
  assert job.stage_config(default, 'distilled').depthwise_impl == 'auto'


def test_configs_load_from_any_working_directory(tmp_path):
  """`--config /abs/path/configs/NAME.py` works from another cwd: configs/ is an installed package."""
  import os
  import subprocess
  import sys
  out = subprocess.run(
      [sys.executable, '-m', 'lkd_jax.main', f'--config={os.path.abspath(demo.__file__)}:steps=0',
       '--workdir=W'], cwd=tmp_path, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.returncode == 2
  assert 'steps=0 must be positive' in out.stderr  # the config loaded and ran its own checks
  assert 'No module named' not in out.stderr and not (tmp_path / 'W').exists()
