"""notebooks/quickstart.ipynb, executed headless on CPU with tiny parameters: any cell error fails."""
import json
import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / 'notebooks' / 'quickstart.ipynb'
# A few steps per stage on a few 32 px images, with the same small model as teacher and student and
# step 4 repeating the job's distilled stage (method kd), so that most steps compile to the same
# XLA program (compiled once: the persistent compilation cache below); the teacher check only
# records (a 4-step teacher sits near chance); no end-of-stage evaluation; step 5 on one corruption.
TINY = {
    'WORKDIR': 'runs',
    'DEMO_ARGS': 'teacher=resnet_atto,steps=4,teacher_steps=4,batch=8,num_train=16,teacher_num_train=16',
    'CONFIG_OVERRIDES': {'data.image_size': 32, 'data.num_eval': 16, 'eval_batch_size': 8,
                         'evals': '', 'log_every': 2, 'checkpoint_every': 4,
                         'teacher.check_batches': 1, 'teacher.check_min_accuracy': 0.0},
    'DISTIL_METHOD': 'kd',
    'DISTIL_STEPS': 4,
    'ERF_SIZE': 32,
    'ERF_IMAGES': 2,
    'EVAL_IMAGES': 8,
    'EVAL_CORRUPTIONS': ('contrast',),
}


def parameters_index(nb: nbformat.NotebookNode) -> int:
  """The index of the one cell tagged 'parameters' (papermill's convention)."""
  found = [i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', [])]
  assert len(found) == 1, f'want one cell tagged parameters, found {len(found)}'
  return found[0]


def with_parameters(nb: nbformat.NotebookNode, values: dict) -> nbformat.NotebookNode:
  """The notebook with a cell setting `values` right after its parameters cell, as papermill does."""
  source = '\n'.join(f'{k} = {v!r}' for k, v in values.items())
  nb.cells.insert(parameters_index(nb) + 1, nbformat.v4.new_code_cell(source))
  return nb


def outputs_text(cell: nbformat.NotebookNode) -> str:
  """Everything a cell printed or displayed as text."""
  parts = []
  for out in cell.get('outputs', []):
    parts.append(out.get('text', ''))
    parts += [v for k, v in out.get('data', {}).items() if k.startswith('text/')]
  return '\n'.join(parts)


def test_notebook_is_committed_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert all(not c.outputs and c.execution_count is None for c in code)
  parameters = nb.cells[parameters_index(nb)].source
  assert all(f'{k} = ' in parameters for k in TINY), 'the test sets parameters the notebook lacks'


@pytest.mark.heavy
def test_notebook_runs_headless_on_cpu(tmp_path, monkeypatch):
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('XLA_FLAGS', '')  # one CPU device, as on a Colab CPU runtime
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'jax_cache'))
  monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))
  nb = with_parameters(nbformat.read(NOTEBOOK, as_version=4), TINY)
  NotebookClient(nb, timeout=600, kernel_name='python3',
                 resources={'metadata': {'path': str(tmp_path)}}).execute()  # raises on a cell error

  runs = tmp_path / 'runs'
  report = json.loads((runs / 'demo' / 'report.json').read_text())
  assert {'teacher_acc', 'student_acc', 'distilled_acc', 'direct_gain'} <= set(report)
  text = '\n'.join(outputs_text(c) for c in nb.cells)
  assert 'Direct Gain' in text                           # step 2's report table
  assert 'ConversionError' in text and 'shape mismatches' in text  # step 3's example
  assert (runs / 'distilled_kd' / 'final_metrics.json').exists()  # step 4's run
  live = [c for c in nb.cells if 'LiveCurves(' in c.source][0]
  assert any('image/png' in o.get('data', {}) for o in live.outputs)  # its live curves
  assert (runs / 'curves.png').exists() and (runs / 'erf.png').exists()
  assert 'synthetic-C mean err' in text                  # step 5's evaluation table
