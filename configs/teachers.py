"""The paper's question on the embedded task: large-kernel ConvNet vs small-kernel ConvNet vs
Transformer teachers, each distilling the same small-kernel students, read by Direct and Effective Gain.

    python -m lkd_jax.main --config configs/teachers.py --workdir runs/teachers
    python -m lkd_jax.main --config configs/teachers.py:teachers=slak_atto+convnext_atto+swin_atto+vit_legacy_atto+cswin_atto,students=resnet_atto+convnext_bn_atto,methods=kd+nkd_lkkd+fd,seed=1 --workdir runs/teachers_full
    python -m lkd_jax.report runs/teachers_s*      # mean ± std of every cell over seeds

Stages: `teacher_<t>` per teacher (CE), `student_<s>` per student (the CE baseline) and
`<s>_from_<t>_<method>` per student, teacher and method, all on the glyph-pairs task of
configs/demo.py (64 px, 10 classes). Every distilled student of one student model shares its
baseline's seed, data order and steps, so its gain is the teacher's alone. The job then reports
(lkd_jax/comparison.py): the gains table per student, the students' ERFs, robustness on the
embedded corruption suite, teacher-student agreement and the convergence curves.

Every teacher gets one recipe and one stopping rule (same data, optimiser, augmentation, peak
learning rate `teacher_lr` 5e-4, cosine schedule over `teacher_steps` 8,000 steps): training ends at
the first evaluation (every 50 steps) whose top-1 reaches `teacher_target` (75%), so the teachers
meet at a comparable accuracy however fast their family learns the task; the teachers' table lists
the steps each took, and a teacher that misses the target keeps its last step. Only the model's
shape is set for 64 px inputs (TEACHER_KWARGS), and the two ConvNeXt-block families start their
layer scale at 1 alike: no family's recipe is tuned more than another's. The default Transformer is
the paper's ViT-S shape (vit_legacy_atto); Swin-atto learns this task far more slowly under the same
recipe (README, "The paper's question on the embedded task", has the runs).
"""
import ml_collections

from configs import common, demo

# 64 px inputs give stage maps of 16, 8, 4 and 2 tokens/pixels. SLaK: the demo teacher (kernels
# spanning each whole map). Swin: windows of 4 tokens (16 and 8 px maps split into 4x4 windows with
# shifts; the last two stages are one window each). CSWin: stripes of 1, 2 and 4 on the first three
# maps. ViT and ConvNeXt are registered for 64 px as they are.
TEACHER_KWARGS = {
    **demo.TEACHER_KWARGS,
    'swin_atto': {'img_size': 64, 'window_size': 4},
    'cswin_atto': {'img_size': 64, 'split_size': (1, 2, 4, 2)},
    'convnext_atto': {'layer_scale_init_value': 1.0},  # as slak_atto's (configs/demo.py)
}
DEFAULT_TEACHERS = 'slak_atto+convnext_atto+vit_legacy_atto'


def stage_names(teachers: list[str], students: list[str], methods: list[str]
                ) -> tuple[list[str], list[str], list[tuple[str, str, str, str]]]:
  """(teacher stages, baseline stages, [(distilled stage, student, teacher, method)])."""
  distilled = [(f'{s}_from_{t}_{m}', s, t, m) for s in students for t in teachers for m in methods]
  return [f'teacher_{t}' for t in teachers], [f'student_{s}' for s in students], distilled


def _names(value: str, what: str) -> list[str]:
  names = [n for n in value.split('+') if n]
  if not names or len(set(names)) != len(names):
    raise ValueError(f'Config argument {what}={value!r} must list distinct names joined by "+".')
  return names


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The comparison job; arguments: teachers, students, methods ('+'-joined), seed, steps,
  teacher_steps, teacher_lr, teacher_target (top-1 fraction ending a teacher's training; 0: off),
  batch, num_train, teacher_num_train, erf_images."""
  a = common.parse_arg(arg, teachers=DEFAULT_TEACHERS, students='resnet_atto', methods='kd',
                       seed=0, steps=300, teacher_steps=8000, teacher_lr=5e-4, teacher_target=0.75,
                       batch=64, num_train=512, teacher_num_train=4096, erf_images=64)
  teachers, students = _names(a.teachers, 'teachers'), _names(a.students, 'students')
  methods = _names(a.methods, 'methods')
  c = demo.get_config(f'seed={a.seed},steps={a.steps},teacher_steps={a.teacher_steps},'
                      f'batch={a.batch},num_train={a.num_train},teacher_num_train={a.teacher_num_train}')
  template = c.stage_overrides
  teacher_stages, student_stages, distilled = stage_names(teachers, students, methods)
  overrides = {}
  for stage, t in zip(teacher_stages, teachers):
    overrides[stage] = {**template.teacher.to_dict(), 'optim': {'lr': a.teacher_lr},
                        'model': {'name': t, 'kwargs': TEACHER_KWARGS.get(t, {})},
                        'eval_every': 50, 'target_accuracy': a.teacher_target}
  for stage, s in zip(student_stages, students):
    overrides[stage] = {**template.student.to_dict(), 'model': {'name': s, 'kwargs': {}}}
  for stage, s, t, m in distilled:
    overrides[stage] = {**template.distilled.to_dict(), 'model': {'name': s, 'kwargs': {}},
                        'method': m,
                        'teacher': {'name': t, 'checkpoint': f'stage:teacher_{t}'}}
  c.stages = tuple(teacher_stages + student_stages + [d[0] for d in distilled])
  c.stage_overrides = ml_collections.ConfigDict(overrides)
  c.teacher.name = ''
  # Clean split too: teacher-student agreement is read there (the corrupted summary keeps errors).
  c.evals = 'synthetic+synthetic_c'
  # What the comparison report computes after the stages (lkd_jax/comparison.py).
  c.comparison = ml_collections.ConfigDict({'erf_images': a.erf_images, 'erf_size': 64})
  return c
