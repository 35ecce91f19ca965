"""benchmarks/: every script runs at tiny sizes and prints strict JSON (its JAX side without torch,
as CI has none), and the READMEs' tables are table.py's rendering of the committed result JSON."""
import json
import math
import os
import subprocess
import sys
import types

import pytest

from lkd_jax.kernels import depthwise as dw
from lkd_jax.models import macs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, 'benchmarks')
sys.path.insert(0, BENCH)
import table  # noqa: E402  (benchmarks/table.py)
import torch_side  # noqa: E402  (benchmarks/torch_side.py)

try:
  import torch
except ModuleNotFoundError:
  torch = None


def _strict(constant: str):
  raise ValueError(f'{constant} in a result JSON: strict readers (jq, browsers) refuse it')


def launch(script: str, *args: str) -> subprocess.CompletedProcess:
  """`python benchmarks/SCRIPT --json ARGS` as a user runs it (one CPU device)."""
  env = dict(os.environ, XLA_FLAGS=os.environ.get('XLA_FLAGS', '').replace(
      '--xla_force_host_platform_device_count=8', '').strip())
  return subprocess.run([sys.executable, os.path.join(BENCH, script), '--json', *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)


def run_script(script: str, *args: str) -> dict:
  """`launch`, which must succeed; its stdout parsed as strict JSON."""
  proc = launch(script, *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout, parse_constant=_strict)


def assert_times(row: dict, keys: list[str]) -> None:
  for k in keys:
    assert isinstance(row[k], (int, float)) and 0 < row[k] < math.inf, (k, row[k])


def assert_common(result: dict, benchmark: str) -> None:
  assert result['benchmark'] == benchmark
  assert result['device'].startswith('cpu (cpu); host ') and result['jax']
  assert result['cases']


def assert_torch_side(result: dict, row: dict, ratio_keys: list[str]) -> None:
  """Ratios against PyTorch when it is installed; a note naming the extra when it is not."""
  if torch is None:
    assert 'pip install -e ".[torch]"' in result['torch_note']
    assert not any(k in row for k in ratio_keys)
  else:
    assert_times(row, ratio_keys)


def assert_torch_skipped(result: dict, what: str) -> None:
  """The result says why `what` has no PyTorch side: torch missing, or no equivalent model."""
  if torch is None:
    assert 'pip install -e ".[torch]"' in result['torch_note']
  else:
    assert any(f'torch side skipped for {what}:' in n for n in result['notes'])


def test_depthwise_script():
  result = run_script('depthwise.py', '--stages', '4', '--batches', '1', '--kinds', 'Kx5,slak_unit',
                      '--min-reps', '1', '--max-reps', '1', '--budget', '0')
  assert_common(result, 'depthwise')
  assert [c['kind'] for c in result['cases']] == ['Kx5', 'slak_unit']
  for c in result['cases']:
    kernels = [(c['kh'], c['kw'])] if c['kind'] == 'Kx5' else [(c['kh'], c['kw']), (c['kw'], c['kh']),
                                                               (5, 5)]
    # The label names what the library's `auto` picks for each convolution of the case.
    assert c['auto_impl'] == '+'.join(dw.pick_auto((1, c['hw'], c['hw'], c['c']), (kh, kw, c['c']),
                                                   'cpu') for kh, kw in kernels)
    assert_times(c, ['jax_fwd', 'jax_fwd_bwd'])
    assert_torch_side(result, c, ['ratio_fwd', 'ratio_fwd_bwd', 'ratio'])


@pytest.mark.heavy
def test_kd_step_script():
  # The teacher in bfloat16, as `auto` runs it on a GPU or TPU.
  result = run_script('kd_step.py', '--pairs', 'slak_atto:resnet_atto', '--size', '32', '--batch', '2',
                      '--reps', '1', '--peak-tflops', '1', '--teacher-dtype', 'bfloat16')
  assert_common(result, 'kd_step')
  assert result['teacher_form'] == 'merged_decom' and result['pairs_in'] == 'this process'
  assert result['teacher_dtype'] == 'bfloat16'
  (row,) = result['cases']
  assert (row['teacher'], row['student'], row['batch'], row['size']) == ('slak_atto', 'resnet_atto', 2, 32)
  assert result['jax_step'].startswith('lkd_jax.step.train_step, built and jitted by '
                                        'lkd_jax.train.jit_train_step')
  assert_times(row, ['jax_step_s', 'jax_teacher_fwd_s', 'jax_images_per_s', 'jax_mfu'])
  assert row['jax_images_per_s'] == pytest.approx(2 / row['jax_step_s'], rel=0.02)
  dense = lambda name: macs.count_macs(name, 32) / 1e9
  assert row['gflop_per_image'] == pytest.approx(2 * dense('slak_atto') + 6 * dense('resnet_atto'),
                                                 abs=1e-3)
  # The script's PyTorch models are the paper's sizes only: a tiny pair runs its JAX side alone.
  assert 'torch_step_s' not in row and 'ratio' not in row
  assert_torch_skipped(result, 'slak_atto:resnet_atto')


@pytest.mark.parametrize('cuda, choice, preset, expected', [
    (True, 'auto', {}, {'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.45'}),
    (True, 'cuda:0', {}, {'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.45'}),
    (True, 'cpu', {}, {}),
    (False, 'auto', {}, {}),
    (True, 'auto', {'XLA_CLIENT_MEM_FRACTION': '.9'}, {'XLA_CLIENT_MEM_FRACTION': '.9'}),
    (True, 'auto', {'XLA_PYTHON_CLIENT_MEM_FRACTION': '.3'}, {'XLA_PYTHON_CLIENT_MEM_FRACTION': '.3'}),
])
def test_jax_leaves_gpu_memory_for_torch(monkeypatch, cuda, choice, preset, expected):
  names = ('XLA_PYTHON_CLIENT_MEM_FRACTION', 'XLA_CLIENT_MEM_FRACTION')
  for name in names:
    monkeypatch.delenv(name, raising=False)
  for name, value in preset.items():
    monkeypatch.setenv(name, value)
  fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: cuda))
  monkeypatch.setattr(torch_side, 'torch', fake_torch)
  torch_side.leave_gpu_memory_for_torch(choice)
  assert {n: os.environ[n] for n in names if n in os.environ} == expected


def test_kd_step_pairs_in_own_processes(monkeypatch, capsys):
  # The parent only gathers its children's results: a JAX backend started in it would hold a GPU
  # memory pool while they run.
  import kd_step  # noqa: E402  (benchmarks/kd_step.py)
  commands = []

  def child(cmd, **kwargs):
    commands.append(cmd)
    teacher, student = cmd[-4].split(':')
    with open(cmd[-1], 'w') as f:
      json.dump(dict(benchmark='kd_step', device=f'run {len(commands)}', pairs_in='this process',
                     notes=['both', teacher], summary={},
                     cases=[dict(teacher=teacher, student=student,
                                 jax_teacher_fwd_s={'slak_t': 3.0, 'convnext_t': 2.0}[teacher])]), f)

  def no_backend():
    raise AssertionError('the parent process started a JAX backend')

  monkeypatch.setattr(kd_step.subprocess, 'run', child)
  monkeypatch.setattr(kd_step.jax, 'default_backend', no_backend)
  monkeypatch.setattr(kd_step.jax, 'devices', no_backend)
  kd_step.main(['--json', '--reps', '2', '--pairs', 'slak_t:resnet50,convnext_t:resnet50'])
  result = json.loads(capsys.readouterr().out)
  assert [c[-5:-1] for c in commands] == [['--pairs', 'slak_t:resnet50', '--same-process', '--out'],
                                          ['--pairs', 'convnext_t:resnet50', '--same-process', '--out']]
  assert all(c[2:6] == ['--json', '--reps', '2', '--pairs'] for c in commands)
  assert result['device'] == 'run 1' and result['pairs_in'] == 'a process each'
  assert result['notes'] == ['both', 'slak_t', 'convnext_t']
  assert [c['teacher'] for c in result['cases']] == ['slak_t', 'convnext_t']
  assert result['summary'] == {'jax_slak_t_fwd_over_convnext_t_fwd': 1.5}


def test_kd_step_script_refuses_unknown_pairs_early():
  proc = launch('kd_step.py', '--pairs', 'slak_t:resnet5,slak_t:resnet50')
  assert proc.returncode == 2
  assert "got 'slak_t:resnet5' (unknown: resnet5; `python -m lkd_jax.models --list`" in proc.stderr


def test_teacher_forward_script():
  result = run_script('teacher_forward.py', '--models', 'slak_atto', '--size', '32', '--batch', '2',
                      '--reps', '1')
  assert_common(result, 'teacher_forward')
  (row,) = result['cases']
  assert_times(row, ['training_forms_ms', 'inference_ms', 'merged_ms', 'merged_decom_ms',
                     'without_depthwise_ms'])
  assert set(row['compile_s']) == {'training_forms', 'inference', 'merged', 'merged_decom',
                                   'without_depthwise'}
  assert 'torch_inference_ms' not in row  # PyTorch teachers: the paper's sizes only.
  assert_torch_skipped(result, 'slak_atto')


@pytest.mark.heavy
@pytest.mark.parametrize('script,args,time_keys', [
    ('dense_conv.py', ['--batch', '1', '--only', 'r50_l1_1x1_64_64'],
     ['jax_xla_fwd', 'jax_xla_fwd_bwd', 'jax_matmul_fwd', 'jax_matmul_fwd_bwd']),
    ('max_pool.py', ['--batches', '1'], ['jax_pool_fwd', 'jax_pool_fwd_bwd', 'jax_reduce_window_fwd_bwd']),
    ('layer_norm.py', ['--models', 'convnext_atto', '--batch', '1', '--reps', '1'],
     ['reduce_ms', 'dot/reduce_ms']),
    ('kernel_grad.py', ['--models', 'convnext_atto', '--size', '32', '--batch', '2', '--reps', '1'],
     ['before_ms', 'fft_ms', 'tree_ms', 'auto_ms']),
])
def test_small_scripts(script, args, time_keys):
  result = run_script(script, *args)
  assert_common(result, script[:-3])
  for row in result['cases']:
    assert_times(row, time_keys)


@pytest.mark.heavy
def test_input_pipeline_script():
  result = run_script('input_pipeline.py', '--sources', 'synthetic', '--synthetic', '8', '--batch', '4',
                      '--warmup', '1', '--seconds', '0.5', '--stage-seconds', '0.2',
                      '--device-batch', '2', '--kd-pair', 'slak_atto:resnet_atto')
  assert result['benchmark'] == 'input_pipeline'
  (row,) = result['cases']
  assert row['source'] == 'synthetic' and row['images'] == 8
  assert_times(row, ['train_host_img_per_cpu_s', 'train_device_img_per_cpu_s', 'eval_img_per_s'])
  assert [s['stage'] for s in row['stages']] == ['read', 'decode', 'resize', 'flip', 'randaugment',
                                                 'erasing', 'batching']
  assert_times(result['device_half'], ['gflop_per_img', 'kd_step_gflop_per_img', 'cpu_ms_per_img'])


@pytest.mark.parametrize('readme,result_file', [
    ('benchmarks/README.md', 'depthwise_cpu.json'),
    ('benchmarks/README.md', 'teacher_forward_cpu.json'),
    ('benchmarks/README.md', 'kd_step_cpu_three_pairs_own_processes.json'),
])
def test_readme_tables_are_the_committed_results(readme, result_file):
  with open(os.path.join(BENCH, 'results', result_file)) as f:
    rendered = table.table(json.load(f))
  with open(os.path.join(ROOT, readme)) as f:
    assert rendered in f.read(), f'{readme} lacks `python benchmarks/table.py` of {result_file}'


def test_table_refuses_other_results():
  with pytest.raises(ValueError, match="No table for benchmark 'max_pool'"):
    table.table({'benchmark': 'max_pool', 'cases': []})
