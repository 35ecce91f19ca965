"""Direct / Effective Gain report and the job's stage configs."""
import json

import pytest

from configs import demo
from lkd_jax import job, report


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
  t, s, d = (job.stage_config(c, k, str(tmp_path)) for k in ('teacher', 'student', 'distilled'))
  assert (t.method, s.method, d.method) == ('ce', 'ce', 'kd')
  assert t.model.name == 'slak_atto' and s.model.name == d.model.name == 'resnet_atto'
  assert s.seed == d.seed == 4 and s.total_steps == d.total_steps == 7
  assert d.teacher.checkpoint == str(tmp_path / 'teacher')
  assert 'stages' not in d and 'stage_overrides' not in d
