"""Direct / Effective Gain report and the job's stage configs."""
import json
import os

import pytest

from configs import demo
from lkd_jax import job, report, rundir, train


def test_gains_and_report_files(tmp_path):
  rep = report.build(0.80, 0.70, 0.75, seed=3, teacher='t', student='s', method='kd')
  assert rep['direct_gain'] == pytest.approx(0.05)
  assert rep['effective_gain'] == pytest.approx(0.05 / 0.80)
  report.write(rep, str(tmp_path))
  saved = json.loads((tmp_path / 'report.json').read_text())
  for key in ('teacher_acc', 'student_acc', 'distilled_acc', 'direct_gain', 'effective_gain', 'seed'):
    assert key in saved
  md = (tmp_path / 'report.md').read_text()
  assert '+5.00 points' in md and '| teacher | t | 80.00 |' in md


def test_stage_configs_share_seed_and_point_the_student_at_the_teacher_run(tmp_path):
  c = demo.get_config('seed=4,method=kd,steps=7')
  t, s, d = (job.stage_config(c, k) for k in ('teacher', 'student', 'distilled'))
  assert (t.method, s.method, d.method) == ('ce', 'ce', 'kd')
  assert t.model.name == 'slak_atto' and s.model.name == d.model.name == 'resnet_atto'
  assert s.seed == d.seed == 4 and s.total_steps == d.total_steps == 7
  assert d.teacher.checkpoint == 'stage:teacher'  # resolved against the workdir: a moved one works
  assert 'stages' not in d and 'stage_overrides' not in d


def test_summary_over_seeds_groups_by_method_with_sample_std(tmp_path, capsys):
  reps = [report.build(0.8, s, d, seed=i, teacher='t', student='s', method=m)
          for i, (s, d, m) in enumerate([(0.70, 0.74, 'kd'), (0.72, 0.74, 'kd'), (0.71, 0.70, 'nkd')])]
  rows = {r['method']: r for r in report.summarize(reps)}
  assert rows['kd']['seeds'] == [0, 1] and rows['kd']['wins'] == 2 and rows['nkd']['wins'] == 0
  assert rows['kd']['direct_gain'][0] == pytest.approx(0.03)
  assert rows['kd']['direct_gain'][1] == pytest.approx(0.02 ** 0.5 / 10 * 1.0, rel=1e-6)  # std(.04,.02)
  assert rows['nkd']['direct_gain'] == (pytest.approx(-0.01), 0.0)
  for i, r in enumerate(reps):
    (tmp_path / str(i)).mkdir()
    report.write(r, str(tmp_path / str(i)))
  (tmp_path / 'running').mkdir()
  report.main([str(tmp_path / '0'), str(tmp_path / '1'), str(tmp_path / '2' / 'report.json'),
               str(tmp_path / 'running')])
  out = capsys.readouterr()
  md = out.out
  assert 'skipping' in out.err and 'running' in out.err
  assert '| t | s | kd | 2 |' in md and '+3.00 ± 1.41' in md and '| 2/2 |' in md


def test_finished_stage_is_read_back_only_with_the_same_config(tmp_path):
  cfg = job.stage_config(demo.get_config('seed=1,steps=5'), 'student')
  other = job.stage_config(demo.get_config('seed=1,steps=6'), 'student')
  stage = str(tmp_path / 'student')
  assert rundir.inspect(cfg, stage).kind == 'fresh'  # never ran
  rundir.write_config(cfg, stage)
  done = {'accuracy': 0.5, 'config_digest': rundir.config_digest(cfg)}
  rundir.write_final(done, stage)
  assert rundir.inspect(cfg, stage) == ('finished', done)
  # Logging and checkpoint cadence do not change a run's numbers: still the same run.
  cfg.unlock().log_every = 7
  assert rundir.inspect(cfg, stage) == ('finished', done)
  # Another config is never "finished" here: it is refused, naming the key.
  with pytest.raises(rundir.StageMismatch, match=r"total_steps: 5 -> 6"):
    rundir.inspect(other, stage)
  assert rundir.config_digest(other) != rundir.config_digest(cfg)


def test_job_report_names_packages_and_host(tmp_path, monkeypatch):
  """report.json records what ran the job (versions, backend, host ISA): the numbers depend on it."""
  import jax
  from lkd_jax import environment
  acc = {'teacher': 0.9, 'student': 0.6, 'distilled': 0.7}
  monkeypatch.setattr(train, 'train_and_evaluate',
                      lambda cfg, stage_dir: {'accuracy': acc[os.path.basename(stage_dir)]})
  monkeypatch.setattr(train, 'validate', lambda cfg, *a, **k: (cfg, None))
  rep = job.run_job(demo.get_config('seed=5,steps=3'), str(tmp_path))
  saved = json.loads((tmp_path / 'report.json').read_text())
  assert saved['distilled_acc'] == 0.7 and saved['seed'] == 5 and rep == saved
  env = saved['environment']
  assert env['packages']['jax'] == jax.__version__ and env['packages']['flax']
  assert env['backend'] == jax.default_backend() and env['host']['cores'] == os.cpu_count()
  monkeypatch.setattr(environment, '_cpuinfo', lambda key: 'fpu sse4_2 avx avx2 fma')
  assert environment.cpu_isa() == 'avx2'
  monkeypatch.setattr(environment, '_cpuinfo', lambda key: 'avx2 avx512f avx512dq')
  assert environment.cpu_isa() == 'avx512f'


def test_robustness_table_groups_seeds_and_reads_either_record(tmp_path, capsys):
  def run(name, seed, summary, in_eval_json):
    d = tmp_path / name
    d.mkdir()
    (d / 'config.json').write_text(json.dumps({
        'model': {'name': 'resnet_atto'}, 'method': 'kd', 'seed': seed,
        'teacher': {'name': 'slak_atto', 'checkpoint': 'stage:teacher'}}))
    final = {'accuracy': summary['synthetic']['top1'], 'teacher': {'model': 'slak_atto'}}
    if in_eval_json:
      (d / 'eval').mkdir()
      (d / 'eval' / 'eval.json').write_text(json.dumps({'weights': {'raw': {'summary': summary}}}))
    else:
      final['evals'] = {'raw': summary}
    (d / 'final_metrics.json').write_text(json.dumps(final))
    return str(d)

  a = run('s0', 0, {'synthetic': {'top1': 0.8}, 'synthetic_c': {'mean_error': 0.5}}, True)
  b = run('s1', 1, {'synthetic': {'top1': 0.6}, 'synthetic_c': {'mean_error': 0.7}}, False)
  (tmp_path / 'bare').mkdir()
  (tmp_path / 'bare' / 'config.json').write_text(json.dumps({'model': {'name': 'x'}}))
  columns, rows = report.robustness_rows([a, b, str(tmp_path / 'bare')])
  assert columns == ['embedded top-1', 'embedded-C mean err']
  assert len(rows) == 1 and rows[0]['run'] == 'resnet_atto ← slak_atto (kd)' and rows[0]['runs'] == 2
  assert rows[0]['embedded top-1'] == (pytest.approx(0.7), pytest.approx(0.02 ** 0.5))
  report.main(['--robustness', a, b])
  out = capsys.readouterr().out
  assert '| resnet_atto ← slak_atto (kd) | 2 | 70.00 ± 14.14 | 60.00 ± 14.14 |' in out


def test_job_report_shows_the_corrupted_error_when_every_stage_has_one():
  rep = report.build(0.9, 0.7, 0.75, seed=0, teacher='t', student='s', method='kd',
                     teacher_c_error=0.4, student_c_error=0.6, distilled_c_error=0.55)
  md = report.to_markdown(rep)
  assert '| corrupted error (%) |' in md and '| distilled (kd) | s | 75.00 | 55.00 |' in md
  assert 'corrupted' not in report.to_markdown(report.build(0.9, 0.7, 0.75, student_c_error=0.6))
