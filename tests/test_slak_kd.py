"""configs/slak_kd.py: recipe, argument errors, and 2-step CLI runs (mock ImageNet, an image folder)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

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


def test_eval_split_and_num_classes_default_to_the_datasets():
  c = slak_kd.get_config('dataset=folder:/data/imagenet100')
  assert (c.data.name, c.data.eval_split, c.num_classes) == ('folder:/data/imagenet100', '', 0)
  c = slak_kd.get_config('dataset=folder:/data/x,eval_split=test,num_classes=100')
  assert (c.data.eval_split, c.num_classes) == ('test', 100)
  for arg in ('eval_split', 'num_classes'):
    assert f'\n  {arg} ' in slak_kd.__doc__  # listed in the docstring's arguments.
  assert 'dataset=folder:' in slak_kd.__doc__


def _main(config_arg: str, workdir: str, *flags: str, timeout: int = 600
          ) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS='', TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu')
  return subprocess.run(
      [sys.executable, '-m', 'lkd_jax.main', f'--config={ROOT}/configs/slak_kd.py:{config_arg}',
       f'--workdir={workdir}', *flags], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=timeout)


def test_main_without_imagenet_names_manual_dir_and_exits_nonzero(tmp_path):
  workdir = tmp_path / 'run'
  out = _main(f'data_dir={tmp_path / "tfds"}', str(workdir))
  assert out.returncode != 0
  assert 'imagenet2012' in out.stderr and 'downloads/manual' in out.stderr
  assert 'tfds build imagenet2012' in out.stderr and 'Traceback' not in out.stderr
  assert not workdir.exists()  # nothing written before the data check


@pytest.mark.heavy
def test_main_two_steps_on_mock_imagenet_with_tiny_models(tmp_path):
  teacher = models.create('slak_atto', num_classes=1000, seed=3)
  ckpt = save_converted(teacher, tmp_path / 'teacher', {'model': 'slak_atto', 'num_classes': 1000})
  workdir = tmp_path / 'run'
  out = _main(f'teacher=slak_atto,student=resnet_atto,method=fd+nkd,teacher_ckpt={ckpt},mock=16,'
              'teacher_check=0,'
              'steps=2,batch=8,eff_batch=16,image_size=64', str(workdir),
              '--config.depthwise_impl=xla')  # the CPU forms' compile time is not what this tests
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'host malloc tuned' in out.stderr  # JAX on CPU: lkd_jax/kernels/host_malloc.py applied first.
  final = json.loads((workdir / 'final_metrics.json').read_text())
  assert final['step'] == 2 and final['count'] == 16  # every mock eval example counted once
  cfg = json.loads((workdir / 'config.json').read_text())
  assert cfg['optim']['grad_accum_steps'] == 2 and cfg['data']['mock'] == 16
  assert os.listdir(workdir / 'checkpoints')


def _image_folder(root, splits: tuple[str, ...], classes=('cat', 'dog', 'emu'), n: int = 2) -> str:
  """root/<split>/<class>/<k>.JPEG: n small random JPEGs (PIL) per class; returns 'folder:root'."""
  rng = np.random.default_rng(0)
  for split in splits:
    for cls in classes:
      os.makedirs(root / split / cls)
      for k in range(n):
        pixels = rng.integers(0, 256, (int(rng.integers(20, 48)), 40, 3), np.uint8)
        Image.fromarray(pixels).save(root / split / cls / f'{k}.JPEG', quality=90)
  return f'folder:{root}'


@pytest.mark.heavy
def test_main_on_an_image_folder_takes_eval_split_and_num_classes_from_it(tmp_path):
  dataset = _image_folder(tmp_path / 'data', ('train', 'val'))
  workdir = tmp_path / 'run'
  out = _main(f'dataset={dataset},student=resnet_atto,method=ce,steps=2,eff_batch=6,image_size=32',
              str(workdir))
  assert out.returncode == 0, out.stderr[-3000:]
  cfg = json.loads((workdir / 'config.json').read_text())
  assert (cfg['data']['eval_split'], cfg['num_classes']) == ('val', 3)  # resolved, as run.
  assert json.loads((workdir / 'final_metrics.json').read_text())['count'] == 6


def test_main_on_an_ambiguous_image_folder_names_its_eval_splits_in_one_line(tmp_path):
  dataset = _image_folder(tmp_path / 'data', ('train', 'val', 'test'), n=1)
  workdir = tmp_path / 'run'
  out = _main(f'dataset={dataset},student=resnet_atto,method=ce,steps=2,eff_batch=6', str(workdir))
  assert out.returncode != 0 and 'Traceback' not in out.stderr
  assert 'several eval splits (val, test)' in out.stderr and 'eval_split=NAME' in out.stderr
  assert not workdir.exists()
