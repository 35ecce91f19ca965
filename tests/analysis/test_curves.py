"""Training curves: the trainer's event files read back, runs grouped over seeds, the PNG, report --plot."""
import json

import numpy as np
import pytest
from clu import metric_writers
from PIL import Image

from lkd_jax import report
from lkd_jax.analysis import curves, plots, runs

KD = {'teacher': 'slak_atto', 'student': 'resnet_atto', 'method': 'kd'}


def write_run(path, *, student='resnet_atto', method='ce', teacher=None, seed=0, loss_offset=0.0,
              acc_offset=0.0, steps=(2, 4, 6), eval_steps=(3, 6)):
  """A run directory as the trainer leaves it: config.json, clu scalars, final_metrics.json."""
  path.mkdir(parents=True)
  config = {'model': {'name': student, 'kwargs': {}}, 'method': method, 'seed': seed,
            'batch_size': 16, 'total_steps': steps[-1], 'epochs': 1.0,
            'data': {'num_train': 32}, 'teacher': {'name': teacher or 'slak_atto', 'checkpoint': ''}}
  (path / 'config.json').write_text(json.dumps(config))
  writer = metric_writers.create_default_writer(str(path))
  writer.write_hparams({'seed': seed})
  for s in steps:
    writer.write_scalars(s, {'train/loss': 10.0 / s + loss_offset, 'train/ce': 10.0 / s + loss_offset, 'train/lr': 0.1})
  for s in eval_steps:
    writer.write_scalars(s, {'eval/accuracy': s / 10 + acc_offset, 'eval/count': 40})
  writer.flush()
  writer.close()
  final = {'step': steps[-1], 'accuracy': eval_steps[-1] / 10 + acc_offset}
  if teacher:
    final['teacher'] = {'model': teacher, 'kind': 'run'}
  (path / 'final_metrics.json').write_text(json.dumps(final))
  return path


@pytest.fixture(scope='module')
def job(tmp_path_factory):
  """A job dir (teacher, student, distilled stages) and a second seed of the distilled run."""
  root = tmp_path_factory.mktemp('curves')
  job = root / 'job'
  job.mkdir()
  (job / 'config.json').write_text(json.dumps({'stages': ['teacher', 'student', 'distilled']}))
  write_run(job / 'teacher', student='slak_atto')
  write_run(job / 'student')
  write_run(job / 'distilled', **KD)
  seed1 = write_run(root / 'distilled_seed1', **KD, seed=1, loss_offset=1.0, acc_offset=0.2)
  return job, seed1


def test_read_scalars_gives_the_series_written(job):
  scalars = curves.read_scalars(str(job[0] / 'distilled'))
  np.testing.assert_array_equal(scalars['train/loss'].steps, [2, 4, 6])
  np.testing.assert_allclose(scalars['train/loss'].values, [5.0, 2.5, 10 / 6], rtol=1e-6)
  np.testing.assert_array_equal(scalars['eval/accuracy'].steps, [3, 6])
  np.testing.assert_allclose(scalars['eval/accuracy'].values, [0.3, 0.6], rtol=1e-6)
  assert not any(tag.startswith('_hparams_') for tag in scalars)


def test_a_resumed_run_keeps_the_newest_value_of_a_step(tmp_path):
  run = write_run(tmp_path / 'run', steps=(2, 4))
  writer = metric_writers.create_default_writer(str(run))  # the resumed run: a second event file
  writer.write_scalars(4, {'train/loss': 7.0})
  writer.write_scalars(6, {'train/loss': 6.0})
  writer.close()
  assert len(curves.event_files(str(run))) == 2
  loss = curves.read_scalars(str(run))['train/loss']
  np.testing.assert_array_equal(loss.steps, [2, 4, 6])
  np.testing.assert_allclose(loss.values, [5.0, 7.0, 6.0])


def test_runs_are_described_from_their_record(job):
  root, seed1 = job
  paths = runs.expand([str(root), str(seed1)])
  assert [p.split('/')[-1] for p in paths] == ['teacher', 'student', 'distilled', 'distilled_seed1']
  info = {p.split('/')[-1]: runs.describe(p) for p in paths}
  assert info['student'].key == (None, 'resnet_atto', 'ce')  # its config names a teacher: unused
  assert info['teacher'].key == (None, 'slak_atto', 'ce')
  assert info['distilled'].key == ('slak_atto', 'resnet_atto', 'kd')
  assert info['distilled'].steps_per_epoch == 2.0
  assert runs.label(*info['distilled'].key) == 'slak_atto → resnet_atto (kd)'


def test_groups_average_over_seeds(job):
  root, seed1 = job
  groups = curves.group([curves.read_run(p) for p in runs.expand([str(root), str(seed1)])])
  assert [g.label for g in groups] == ['slak_atto (ce)', 'resnet_atto (ce)',
                                       'slak_atto → resnet_atto (kd), 2 seeds']
  panel = curves.panel(groups, curves.EVAL_ACCURACY, 'eval top-1', '%', scale=100.0)
  kd = panel['lines'][2]
  np.testing.assert_array_equal(kd['x'], [3, 6])
  np.testing.assert_allclose(kd['y'], [40.0, 70.0], rtol=1e-5)  # mean of (30, 50) and (60, 80)
  std = np.std([30.0, 50.0], ddof=1)
  np.testing.assert_allclose(kd['band'][1] - kd['y'], [std, std], rtol=1e-5)
  assert panel['lines'][0]['band'] is None


def test_mean_band_uses_the_steps_all_runs_have():
  a = curves.Series(np.array([1, 2, 3]), np.array([1.0, 2.0, 3.0]))
  b = curves.Series(np.array([2, 3, 4]), np.array([4.0, 6.0, 8.0]))
  steps, mean, std = curves.mean_band([a, b])
  np.testing.assert_array_equal(steps, [2, 3])
  np.testing.assert_allclose(mean, [3.0, 4.5])
  np.testing.assert_allclose(std, np.std([[2.0, 3.0], [4.0, 6.0]], axis=0, ddof=1))


def test_report_plot_writes_a_png(job, tmp_path, capsys):
  root, seed1 = job
  out = tmp_path / 'curves.png'
  report.main(['--plot', str(out), str(root), str(seed1)])
  with Image.open(out) as img:
    assert img.format == 'PNG' and img.size == plots.curves_figure_px(2)
  printed = capsys.readouterr().out
  assert 'slak_atto → resnet_atto (kd), 2 seeds' in printed and f'wrote {out}' in printed
  report.main([f'--plot={tmp_path / "one.png"}', str(root / 'student')])
  assert (tmp_path / 'one.png').exists()
  with pytest.raises(SystemExit, match='usage'):
    report.main(['--plot', str(out)])
  with pytest.raises(SystemExit, match='not a run directory'):
    report.main(['--plot', str(out), str(tmp_path)])
