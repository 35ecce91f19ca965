"""erf.compare_runs: `python -m lkd_jax.erf --compare` from Python."""
import os

import numpy as np
import pytest
from PIL import Image

from lkd_jax import erf as erf_cli
from lkd_jax.analysis import erf, plots
from lkd_jax.errors import SetupError


def _stored(tmp_path, name: str, size: int = 32) -> str:
  """An ERF output directory as `python -m lkd_jax.erf` leaves it."""
  erf_map = np.ones((size, size), np.float32)
  erf_map[size // 2, size // 2] = 100.0
  info = {'label': name, 'size': size, 'images': 'synthetic', 'images_requested': 2,
          'images_used': 2, 'images_skipped': 0, 'areas': erf.high_contribution_area(erf_map)}
  erf_cli.write_one(erf_map, info, str(tmp_path / name))
  return str(tmp_path / name)


def test_compare_runs_draws_stored_erfs_and_refuses_other_settings(tmp_path):
  paths = [_stored(tmp_path, 'teacher'), _stored(tmp_path, 'student')]
  out = str(tmp_path / 'compare.png')
  infos = erf_cli.compare_runs(paths, out, 'synthetic', size=32, num_images=2)
  assert [i['label'] for i in infos] == ['teacher', 'student']
  assert Image.open(out).size == plots.erf_figure_px(2)
  assert open(str(tmp_path / 'compare.md')).read() == erf_cli.table(infos)
  assert os.path.exists(str(tmp_path / 'compare.json'))
  with pytest.raises(SetupError, match=r'size 32 \(asked: 64\)'):
    erf_cli.compare_runs(paths, out, 'synthetic', size=64)
