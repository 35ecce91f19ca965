"""LiveCurves: a clu metric writer that records and redraws a run's curves; the trainer's `writers` hook."""
import io

import numpy as np
from PIL import Image

from lkd_jax import train
from lkd_jax.analysis import live, plots
from tests.conftest import tiny_run_config


def _png_size(png: bytes) -> tuple[int, int]:
  return Image.open(io.BytesIO(png)).size


def test_records_only_its_tags_and_redraws_at_most_every_interval():
  shown = []
  curves = live.LiveCurves(label='r', min_interval_s=3600.0, show=shown.append)
  curves.write_scalars(2, {'train/loss': 2.0, 'train/lr': 0.1})
  curves.write_scalars(4, {'train/loss': 1.0, 'train/ce': 1.5})
  curves.write_scalars(5, {'train/lr': 0.2})  # no plotted tag: nothing to redraw
  assert len(shown) == 1  # the first write draws; the next within the interval does not
  assert curves.series == {'train/loss': {2: 2.0, 4: 1.0}, 'train/ce': {4: 1.5},
                           'eval/accuracy': {}}
  curves.write_scalars(4, {'eval/accuracy': 0.25})
  curves.flush()
  assert len(shown) == 2 and _png_size(shown[-1]) == plots.curves_figure_px(3)
  panels = curves.figure_panels()
  assert [p['title'] for p in panels] == ['train loss', 'train cross-entropy', 'eval top-1']
  assert panels[0]['lines'][0]['x'] == [2, 4] and panels[2]['lines'][0]['y'] == [25.0]


def test_flush_without_scalars_draws_nothing_and_outside_a_kernel_nothing_is_shown():
  shown = []
  live.LiveCurves(show=shown.append).flush()
  assert shown == []
  live.ipython_show()(b'png')  # pytest runs no IPython kernel: a no-op, not an error


def test_the_trainer_sends_every_logged_scalar_to_extra_writers(tmp_path):
  shown = []
  curves = live.LiveCurves(label='run', min_interval_s=0.0, show=shown.append)
  result = train.train_and_evaluate(tiny_run_config(total_steps=4, eval_every=2), str(tmp_path),
                                    writers=[curves])
  assert sorted(curves.series['train/loss']) == [2, 4]  # log_every=2
  assert curves.series['eval/accuracy'] == {2: curves.series['eval/accuracy'][2],
                                            4: result['accuracy']}
  assert np.isfinite(list(curves.series['train/ce'].values())).all()
  assert shown and _png_size(shown[-1]) == plots.curves_figure_px(3)
