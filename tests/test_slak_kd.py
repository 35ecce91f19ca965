"""configs/slak_kd.py: the paper's recipe, the missing-ImageNet error, and a 2-step mock run from the CLI."""
import json
import os
import subprocess
import sys

import pytest

from configs import slak_kd
from lkd_jax import models
from lkd_jax.convert import save_converted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_recipe_per_student_and_argument_errors():
  c = slak_kd.get_config('student=convnext_t_bn,method=nkd_lkkd,epochs=300,batch=256')
  assert (c.batch_size, c.optim.grad_accum_steps) == (256, 8)  # effective 2048 (SLaK README)
  assert c.model.kwargs.drop_path_rate == 0.1 and c.epochs == 300 and c.ema_decay == 0.9999
  assert (c.optim.lr, c.optim.weight_decay, c.optim.warmup_epochs, c.optim.min_lr) == (
      4e-3, 0.05, 20.0, 1e-6)
  assert (c.data.randaugment, c.data.reprob, c.mix.mixup_alpha, c.mix.cutmix_alpha) == (
      'rand-m9-mstd0.5-inc1', 0.25, 0.8, 1.0)
  r = slak_kd.get_config('student=resnet50,method=kd')
  assert (r.batch_size, r.optim.grad_accum_steps, r.model.kwargs.drop_path_rate) == (1024, 1, 0.0)
  assert (r.kd_alpha, r.kd_temperature, r.teacher.name) == (0.1, 3.0, 'slak_t')
  assert slak_kd.get_config('student=convnext_s_bn').optim.grad_accum_steps == 1
  assert slak_kd.get_config('student=convnext_s_bn,batch=512').optim.grad_accum_steps == 8  # 4096
  assert slak_kd.get_config('method=ce').teacher.name == ''
  assert r.teacher.inference_form == 'merged_decom'  # SLaK teachers: BN-folded KxN + NxK kernels.
  assert slak_kd.get_config('teacher=swin_t').teacher.inference_form == 'branches'
  assert slak_kd.get_config('teacher_form=merged').teacher.inference_form == 'merged'
  with pytest.raises(ValueError, match='multiple of batch'):
    slak_kd.get_config('eff_batch=1000,batch=300')


def _main(config_arg: str, workdir: str, timeout: int = 600) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS='', TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu')
  return subprocess.run(
      [sys.executable, '-m', 'lkd_jax.main', f'--config={ROOT}/configs/slak_kd.py:{config_arg}',
       f'--workdir={workdir}'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_main_without_imagenet_names_manual_dir_and_exits_nonzero(tmp_path):
  workdir = tmp_path / 'run'
  out = _main(f'data_dir={tmp_path / "tfds"}', str(workdir))
  assert out.returncode != 0
  assert 'imagenet2012' in out.stderr and 'downloads/manual' in out.stderr
  assert 'tfds build imagenet2012' in out.stderr and 'Traceback' not in out.stderr
  assert not workdir.exists()  # nothing written before the data check


def test_main_two_steps_on_mock_imagenet_with_tiny_models(tmp_path):
  teacher = models.create('slak_atto', num_classes=1000, seed=3)
  ckpt = save_converted(teacher, tmp_path / 'teacher', {'model': 'slak_atto', 'num_classes': 1000})
  workdir = tmp_path / 'run'
  out = _main(f'teacher=slak_atto,student=resnet_atto,method=fd+nkd,teacher_ckpt={ckpt},mock=16,'
              'steps=2,batch=8,eff_batch=16,image_size=64', str(workdir))
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'host malloc tuned' in out.stderr  # JAX on CPU: lkd_jax/host_malloc.py applied first.
  final = json.loads((workdir / 'final_metrics.json').read_text())
  assert final['step'] == 2 and final['count'] == 16  # every mock eval example counted once
  cfg = json.loads((workdir / 'config.json').read_text())
  assert cfg['optim']['grad_accum_steps'] == 2 and cfg['data']['mock'] == 16
  assert os.listdir(workdir / 'checkpoints')
