"""The teacher comparison of a job with several teachers and students (configs/teachers.py).

After its stages, such a job (a config with `comparison`) reports, per student model:
- the paper's main table: teachers grouped by pipeline (large-kernel ConvNets | small-kernel
  ConvNets | Transformers), teacher top-1, then per method distilled top-1, Direct Gain and
  Effective Gain (lkd_jax/report.py gains);
- per distilled student (and its baseline): ERF area ratios at t = 0.2/0.3/0.5/0.99 on the task's
  validation images (python -m lkd_jax.erf, stored in each stage's erf/), the mean error on the
  embedded corruption suite and top-1 agreement with its teacher (lkd_jax/evaluate, run at the end
  of each stage by `evals`);
- figures: the students' ERF maps side by side and their eval top-1 curves (baseline dashed).

The report keeps its tables as numbers (report.json `tables`), so `python -m lkd_jax.report` can
give mean ± std of every cell over seeds.
"""
from __future__ import annotations

import os
from typing import Any, NamedTuple

import ml_collections

from lkd_jax import erf as erf_cli
from lkd_jax import report
from lkd_jax.analysis import curves
from lkd_jax.analysis import erf as erf_lib
from lkd_jax.analysis import plots
from lkd_jax.distill import methods
from lkd_jax.errors import SetupError
from lkd_jax.teacher import STAGE_PREFIX

# The paper's two pipelines, with its small-kernel ConvNet teachers (7x7 and 3x3) apart from the
# large-kernel ones; a model belongs to the first whose name prefix it has.
PIPELINES = (('large-kernel ConvNets', ('slak',)),
             ('small-kernel ConvNets', ('convnext', 'resnet')),
             ('Transformers', ('swin', 'vit', 'deit', 'cswin')))
OTHER = 'other'
SUITE = 'synthetic_c'        # the embedded corruption suite (lkd_jax/evaluate/sets.py)
CLEAN = 'synthetic'          # the clean eval split, where agreement with the teacher is read


class Distilled(NamedTuple):
  """A distilled stage, its student model, its teacher stage and model, its baseline stage, its method."""
  stage: str
  student: str
  teacher_stage: str
  teacher: str
  baseline: str
  method: str


def pipeline(model: str) -> str:
  """The pipeline a model's family belongs to (PIPELINES), else 'other'."""
  for name, prefixes in PIPELINES:
    if model.startswith(prefixes):
      return name
  return OTHER


def roles(cfgs: dict[str, ml_collections.ConfigDict]) -> list[Distilled]:
  """The job's distilled stages, each with its teacher stage (`stage:<name>`) and its baseline: the
  CE stage of the same student model and shape that teaches nobody. SetupError when one is missing."""
  out = []
  refs = {c.teacher.checkpoint[len(STAGE_PREFIX):] for c in cfgs.values()
          if methods.get(c.method).needs_teacher and c.teacher.checkpoint.startswith(STAGE_PREFIX)}
  for stage, c in cfgs.items():
    if not methods.get(c.method).needs_teacher:
      continue
    ref = c.teacher.checkpoint
    if not ref.startswith(STAGE_PREFIX) or ref[len(STAGE_PREFIX):] not in cfgs:
      raise SetupError(f'stage {stage!r}: a comparison job distils from its own stages; '
                       f'teacher.checkpoint={ref!r} names none (want stage:<teacher stage>).')
    baselines = [s for s, b in cfgs.items() if b.method == 'ce' and s not in refs
                 and b.model.name == c.model.name and b.model.kwargs == c.model.kwargs]
    if not baselines:
      raise SetupError(f'stage {stage!r}: no baseline for {c.model.name}: add a CE stage of the '
                       'same student model to the job.')
    teacher_stage = ref[len(STAGE_PREFIX):]
    out.append(Distilled(stage, c.model.name, teacher_stage, cfgs[teacher_stage].model.name,
                         baselines[0], c.method))
  if not out:
    raise SetupError('A comparison job needs at least one distilled stage.')
  return out


def _accuracy(results: dict[str, Any], stage: str) -> float:
  return results[stage]['accuracy']


def _eval(results: dict[str, Any], stage: str, suite: str, key: str) -> float | None:
  value = results[stage].get('evals', {}).get('raw', {}).get(suite, {}).get(key)
  return None if value is None else float(value)


def stage_erfs(workdir: str, stages: list[str], images: int, size: int) -> dict[str, dict[str, Any]]:
  """{stage: erf.json record} of each stage's ERF on the task's validation images, computed into
  <stage>/erf/ by the ERF tool (a stored one with the same settings is reused) -> (map, record)."""
  args = erf_cli.parser().parse_args(['--images', 'synthetic:validation', '--size', str(size),
                                      '--num_images', str(images)])
  return {s: erf_cli.resolve(os.path.join(workdir, s), args) for s in stages}


def _gain_table(student: str, rows: list[Distilled], results: dict[str, Any],
                method_names: list[str]) -> dict[str, Any]:
  """The paper's main table for one student: one row per teacher, grouped by pipeline."""
  baseline = rows[0].baseline
  columns = [('pipeline', 'text'), ('teacher', 'text'), ('teacher top-1 (%)', 'pct'),
             ('student (CE) top-1 (%)', 'pct')]
  for m in method_names:
    columns += [(f'{m} top-1 (%)', 'pct'), (f'{m} Direct Gain (points)', 'gain'),
                (f'{m} Effective Gain', 'ratio')]
  order = [p for p, _ in PIPELINES] + [OTHER]
  teachers = sorted({(r.teacher, r.teacher_stage) for r in rows},
                    key=lambda t: (order.index(pipeline(t[0])), t[0]))
  body = []
  for teacher, teacher_stage in teachers:
    t_acc = _accuracy(results, teacher_stage)
    row = [pipeline(teacher), teacher, t_acc, _accuracy(results, baseline)]
    for m in method_names:
      d = [r for r in rows if r.teacher_stage == teacher_stage and r.method == m]
      if not d:
        row += [None, None, None]
        continue
      acc = _accuracy(results, d[0].stage)
      g = report.gains(t_acc, _accuracy(results, baseline), acc)
      row += [acc, g['direct_gain'], g['effective_gain']]
    body.append(row)
  return {'title': f'{student}: teachers by pipeline, Direct and Effective Gain',
          'columns': [{'name': n, 'fmt': f} for n, f in columns], 'rows': body}


def _student_table(student: str, rows: list[Distilled], results: dict[str, Any],
                   erfs: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """ERF areas, corrupted error and agreement of one student model's baseline and distilled runs."""
  thresholds = erf_lib.THRESHOLDS
  columns = [('run', 'text'), ('top-1 (%)', 'pct')]
  columns += [(f'ERF area t={t:g} (%)', 'pct') for t in thresholds]
  columns += [('corrupted error (%)', 'pct'), ('agreement with teacher (%)', 'pct')]
  body = []
  for stage, name in [(rows[0].baseline, f'{student} (CE)')] + [
      (r.stage, f'{r.teacher} → {student} ({r.method})') for r in rows]:
    areas = {a['threshold']: a['area_ratio'] for a in erfs[stage]['areas']}
    body.append([name, _accuracy(results, stage)] + [areas.get(t) for t in thresholds]
                + [_eval(results, stage, SUITE, 'mean_error'),
                   _eval(results, stage, CLEAN, 'agreement')])
  return {'title': f'{student}: receptive field, robustness and agreement',
          'columns': [{'name': n, 'fmt': f} for n, f in columns], 'rows': body}


def _teacher_table(rows: list[Distilled], results: dict[str, Any],
                   erfs: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """The teachers' own top-1, training steps (fewer than scheduled where a target accuracy ended
  training), ERF areas and corrupted error."""
  thresholds = erf_lib.THRESHOLDS
  columns = [('pipeline', 'text'), ('teacher', 'text'), ('top-1 (%)', 'pct'), ('steps', 'count')]
  columns += [(f'ERF area t={t:g} (%)', 'pct') for t in thresholds]
  columns += [('corrupted error (%)', 'pct')]
  body = []
  for stage, teacher in dict.fromkeys((r.teacher_stage, r.teacher) for r in rows):
    areas = {a['threshold']: a['area_ratio'] for a in erfs[stage]['areas']}
    body.append([pipeline(teacher), teacher, _accuracy(results, stage), results[stage].get('step')]
                + [areas.get(t) for t in thresholds] + [_eval(results, stage, SUITE, 'mean_error')])
  return {'title': 'teachers', 'columns': [{'name': n, 'fmt': f} for n, f in columns],
          'rows': body}


def figures(workdir: str, student: str, rows: list[Distilled],
            erfs: dict[str, tuple[Any, dict[str, Any]]]) -> list[str]:
  """erf_<student>.png (baseline and distilled maps side by side) and curves_<student>.png (eval
  top-1 and train CE against step, one line per teacher and method, the baseline dashed)."""
  stages = [rows[0].baseline] + [r.stage for r in rows]
  titles = [f'{student} (CE)'] + [f'{r.teacher} → {student} ({r.method})' for r in rows]
  erf_png = os.path.join(workdir, f'erf_{student}.png')
  plots.erf_figure([erf_lib.normalise(erfs[s][0]) for s in stages], titles,
                   [erf_cli.caption(erfs[s][1]) for s in stages], erf_png)
  curves_png = os.path.join(workdir, f'curves_{student}.png')
  curves.plot([os.path.join(workdir, s) for s in stages], curves_png)
  return [erf_png, curves_png]


def build(config: ml_collections.ConfigDict, cfgs: dict[str, ml_collections.ConfigDict],
          results: dict[str, Any], workdir: str, **extra: Any) -> dict[str, Any]:
  """The comparison report of a finished job (tables as numbers), writing its figures into workdir."""
  distilled = roles(cfgs)
  opts = config.comparison
  teacher_stages = list(dict.fromkeys(d.teacher_stage for d in distilled))
  erf_stages = teacher_stages + list(dict.fromkeys(
      s for d in distilled for s in (d.baseline, d.stage)))
  erfs = stage_erfs(workdir, erf_stages, opts.erf_images, opts.erf_size)
  infos = {s: info for s, (_, info) in erfs.items()}
  method_names = list(dict.fromkeys(d.method for d in distilled))
  tables, files = [], []
  for student in dict.fromkeys(d.student for d in distilled):
    rows = [d for d in distilled if d.student == student]
    tables += [_gain_table(student, rows, results, method_names),
               _student_table(student, rows, results, infos)]
    files += [os.path.basename(f) for f in figures(workdir, student, rows, erfs)]
  tables.append(_teacher_table(distilled, results, infos))
  return {'kind': 'comparison', 'seed': config.seed, 'tables': tables, 'figures': files,
          'erf': {'images': opts.erf_images, 'size': opts.erf_size,
                  'source': 'synthetic:validation'}, **extra}
