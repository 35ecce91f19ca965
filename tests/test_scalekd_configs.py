"""configs/scalekd.py: every official recipe builds and validates (no training); its CAPs fit."""
import jax
import pytest
from flax import nnx

from configs import scalekd as recipes
from lkd_jax import models, optim, train
from lkd_jax.distill import methods, projectors
from lkd_jax.errors import SetupError


def _config(tmp_path, arg):
  ckpt = tmp_path / 'teacher.pth'
  ckpt.write_bytes(b'')  # validate checks that the file exists; nothing reads it here
  return recipes.get_config(f'{arg},teacher_ckpt={ckpt},mock=8')


@pytest.mark.parametrize('recipe', sorted(recipes.RECIPES))
def test_recipe_validates_with_its_official_values(tmp_path, recipe):
  cfg, method = train.validate(_config(tmp_path, f'recipe={recipe}'), str(tmp_path / 'run'))
  assert method.uses_teacher_tail and cfg.method == 'scalekd'
  student, teacher, a3, a4, heads, scale, kd, opt = recipes.RECIPES[recipe]
  assert (cfg.model.name, cfg.teacher.name) == (student, teacher)
  assert (tuple(cfg.scalekd_alpha_s3), tuple(cfg.scalekd_alpha_s4)) == (a3, a4)
  assert tuple(cfg.scalekd_heads) == heads and tuple(cfg.scalekd_softmax_scale) == (scale, scale)
  assert cfg.scalekd_kd_alpha == kd and cfg.optim.name == opt
  optim.make(cfg, 1000, 100.0)  # the optimiser and schedule build


def test_r50_swin_s_caps_fit_the_full_size_models(tmp_path):
  cfg = _config(tmp_path, 'recipe=r50_swin_s')
  shapes = {n: projectors.feature_shapes(nnx.eval_shape(lambda n=n: models.create(n, num_classes=10)),
                                         224) for n in ('resnet50', 'swin_s')}
  proj = nnx.eval_shape(lambda: methods.build_projector(cfg, shapes['resnet50'], shapes['swin_s'], 0))
  assert proj.s3_spatial.pos_embed.shape == (1, 14, 14, 1024)  # R50 s3: 14x14x1024 keys
  assert proj.s3_spatial.query.shape == (14 * 14, 384)         # Swin-S stage 3: 14x14x384
  assert proj.s4_frequency.fc2.kernel.shape == (4 * 768, 768)  # Swin-S final width 768
  cfg.scalekd_heads = (5, 6)
  with pytest.raises(SetupError, match='384.*not divisible by 5 heads'):
    nnx.eval_shape(lambda: methods.build_projector(cfg, shapes['resnet50'], shapes['swin_s'], 0))


def test_unknown_recipe_and_bad_batch_are_refused():
  with pytest.raises(ValueError, match='recipe=.*r50_swin_l'):
    recipes.get_config('recipe=r18_swin_t')
  with pytest.raises(ValueError, match='must divide the recipe batch 256'):
    recipes.get_config('recipe=r50_swin_s,batch=96')
