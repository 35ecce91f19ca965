"""Evaluators: ImageNet and its robustness / OOD sets, calibration, teacher-student agreement, and the
embedded task's clean and corrupted sets; the teacher sanity check. CLI: python -m lkd_jax.evaluate."""
from lkd_jax.evaluate.runner import (TeacherAtChanceError, as_teacher, check_teacher,
                                     chance_threshold, evaluate, load, options, options_from_config,
                                     run_suite)

__all__ = ['TeacherAtChanceError', 'as_teacher', 'check_teacher', 'chance_threshold', 'evaluate',
           'load', 'options', 'options_from_config', 'run_suite']
