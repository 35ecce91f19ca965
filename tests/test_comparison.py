"""The teacher-comparison job (configs/teachers.py, lkd_jax/comparison.py) and its seed summary."""
import json
import os

import ml_collections
import pytest

from configs import teachers
from lkd_jax import comparison, job, report
from lkd_jax.errors import SetupError


def test_default_selection_covers_both_pipelines():
  c = teachers.get_config()
  families = {comparison.pipeline(c.stage_overrides[s].model.name) for s in c.stages
              if s.startswith('teacher_')}
  assert families == {'large-kernel ConvNets', 'small-kernel ConvNets', 'Transformers'}
  assert c.stages == ('teacher_slak_atto', 'teacher_convnext_atto', 'teacher_vit_legacy_atto',
                      'student_resnet_atto', 'resnet_atto_from_slak_atto_kd',
                      'resnet_atto_from_convnext_atto_kd', 'resnet_atto_from_vit_legacy_atto_kd')
  d = c.stage_overrides.resnet_atto_from_vit_legacy_atto_kd
  assert (d.method, d.teacher.name, d.teacher.checkpoint) == ('kd', 'vit_legacy_atto',
                                                             'stage:teacher_vit_legacy_atto')
  # One recipe for every teacher: only the model differs between teacher stages.
  recipes = [{k: v for k, v in c.stage_overrides[s].to_dict().items() if k != 'model'}
             for s in c.stages if s.startswith('teacher_')]
  assert all(r == recipes[0] for r in recipes)
  assert recipes[0]['optim'] == {'lr': 5e-4} and 'optim' not in c.stage_overrides.student_resnet_atto
  assert (recipes[0]['target_accuracy'], recipes[0]['total_steps']) == (0.75, 8000)
  assert 'target_accuracy' not in c.stage_overrides.student_resnet_atto
  with pytest.raises(ValueError, match='distinct names'):
    teachers.get_config('teachers=slak_atto+slak_atto')


def _cfg(model: str, method: str = 'ce', teacher: str = '') -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({'model': {'name': model, 'kwargs': {}}, 'method': method,
                                    'teacher': {'checkpoint': teacher}})


def test_roles_find_each_distilled_stages_teacher_and_baseline():
  cfgs = {'teacher_slak_atto': _cfg('slak_atto'), 'student_resnet_atto': _cfg('resnet_atto'),
          'd': _cfg('resnet_atto', 'kd', 'stage:teacher_slak_atto')}
  assert comparison.roles(cfgs) == [comparison.Distilled(
      'd', 'resnet_atto', 'teacher_slak_atto', 'slak_atto', 'student_resnet_atto', 'kd')]
  with pytest.raises(SetupError, match='no baseline for resnet_atto'):
    comparison.roles({k: v for k, v in cfgs.items() if k != 'student_resnet_atto'})
  with pytest.raises(SetupError, match="names none"):
    comparison.roles({**cfgs, 'd': _cfg('resnet_atto', 'kd', '/some/run')})


def _table(rows):
  return {'title': 't', 'columns': [{'name': 'teacher', 'fmt': 'text'},
                                    {'name': 'top-1 (%)', 'fmt': 'pct'},
                                    {'name': 'DG', 'fmt': 'gain'}, {'name': 'EG', 'fmt': 'ratio'}],
          'rows': rows}


def test_seed_summary_gives_mean_and_std_of_every_cell(tmp_path, capsys):
  for seed, (acc, gain) in enumerate([(0.8, 0.02), (0.9, 0.04)]):
    d = tmp_path / f'teachers_s{seed}'
    d.mkdir()
    rep = {'kind': 'comparison', 'seed': seed, 'tables': [_table([['slak', acc, gain, gain / acc],
                                                                   ['swin', acc, None, None]])]}
    (d / 'report.json').write_text(json.dumps(rep))
  report.main([str(tmp_path / 'teachers_s0'), str(tmp_path / 'teachers_s1')])
  out = capsys.readouterr().out
  assert '2 runs (seeds [0, 1])' in out
  assert '| slak | 85.00 ± 7.07 | +3.00 ± 1.41 | +0.0347 ± 0.0137 |' in out
  assert '| swin | 85.00 ± 7.07 | - | - |' in out


@pytest.mark.heavy
def test_comparison_job_end_to_end(tmp_path):
  c = teachers.get_config('teachers=slak_atto+vit_legacy_atto,steps=3,teacher_steps=4,batch=16,'
                          'num_train=32,teacher_num_train=32,erf_images=1,teacher_target=0')
  c.data.num_eval = 16
  c.eval_batch_size = 16
  c.eval_every = 0
  c.eval_options.update(num_eval=16, corruptions=('contrast',), severities=(3,))
  c.teacher.check_min_accuracy = 0.0  # untrained teachers: record the check, do not refuse them
  for s in c.stages:  # XLA's depthwise conv: the CPU forms' compile time is not what this tests.
    c.stage_overrides[s].update(eval_every=0, depthwise_impl='xla')
  rep = job.run(c, str(tmp_path))
  stored = json.loads((tmp_path / 'report.json').read_text())
  assert stored['kind'] == 'comparison' and stored['seed'] == 0
  gain_table, student_table, teacher_table = stored['tables']
  acc = lambda stage: json.loads((tmp_path / stage / 'final_metrics.json').read_text())['accuracy']
  names = [col['name'] for col in gain_table['columns']]
  assert names[:4] == ['pipeline', 'teacher', 'teacher top-1 (%)', 'student (CE) top-1 (%)']
  rows = {r[1]: dict(zip(names, r)) for r in gain_table['rows']}
  assert [r[0] for r in gain_table['rows']] == ['large-kernel ConvNets', 'Transformers']
  for t in ('slak_atto', 'vit_legacy_atto'):
    r = rows[t]
    assert r['teacher top-1 (%)'] == acc(f'teacher_{t}')
    assert r['kd top-1 (%)'] == acc(f'resnet_atto_from_{t}_kd')
    assert r['kd Direct Gain (points)'] == pytest.approx(
        acc(f'resnet_atto_from_{t}_kd') - acc('student_resnet_atto'))
    assert r['kd Effective Gain'] == pytest.approx(
        r['kd Direct Gain (points)'] / acc(f'teacher_{t}'))
  assert [r[0] for r in student_table['rows']] == [
      'resnet_atto (CE)', 'slak_atto → resnet_atto (kd)', 'vit_legacy_atto → resnet_atto (kd)']
  for row in student_table['rows']:
    erf_areas, c_error, agreement = row[2:6], row[6], row[7]
    assert all(a is None or 0 < a <= 1 for a in erf_areas) and erf_areas[-1] is not None
    assert 0 <= c_error <= 1
    assert (agreement is None) == row[0].endswith('(CE)')
  assert [r[1] for r in teacher_table['rows']] == ['slak_atto', 'vit_legacy_atto']
  assert [r[3] for r in teacher_table['rows']] == [4, 4]  # steps trained
  for f in stored['figures']:
    assert (tmp_path / f).stat().st_size > 1000
  assert rep == stored
  assert '| large-kernel ConvNets | slak_atto |' in (tmp_path / 'report.md').read_text()
  # A second run reads every stage back and its ERFs from the stages' erf/: the same report.
  assert job.run(c, str(tmp_path))['tables'] == stored['tables']
  assert os.path.exists(tmp_path / 'student_resnet_atto' / 'erf' / 'erf.json')
