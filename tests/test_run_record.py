"""The run directory never lies and never loses work: reuse only of the same run, one writer, finite
state only, finished teachers only, whole-job validation before the first step, moved workdirs."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from configs import demo
from lkd_jax import checkpoints, job, lock, rundir, teacher, train
from lkd_jax.errors import SetupError
from tests.conftest import tiny_run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_job(arg: str = '', **overrides):
  """The demo job with resnet_atto as teacher and student, 2 steps per stage on 32 px images."""
  c = demo.get_config('teacher=resnet_atto,steps=2,teacher_steps=2,batch=16,num_train=32,'
                      'teacher_num_train=32' + (',' + arg if arg else ''))
  c.eval_batch_size = 16
  c.log_every = 1
  c.teacher.update(check_batches=1, check_min_accuracy=0.0)  # a 2-step teacher sits near chance
  c.evals = ''  # the corruption suite has its own tests
  c.data.update(image_size=32, num_eval=32)
  c.update_from_flattened_dict(overrides)
  return c


def _snapshot(path) -> dict[str, float]:
  """{relative path: mtime} of every file under `path`."""
  out = {}
  for d, _, files in os.walk(path):
    for f in files:
      p = os.path.join(d, f)
      out[os.path.relpath(p, path)] = os.path.getmtime(p)
  return out


@pytest.fixture(scope='module')
def finished_job(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('job') / 'W')
  rep = job.run_job(tiny_job(), workdir)
  return workdir, rep


def test_changed_config_is_refused_then_moved_aside_with_overwrite(finished_job, tmp_path):
  workdir = str(tmp_path / 'W')
  shutil.copytree(finished_job[0], workdir)
  before = _snapshot(workdir)
  kd_final = rundir.read_final(os.path.join(workdir, 'distilled'))
  with pytest.raises(rundir.StageMismatch) as e:
    job.run_job(tiny_job('method=dkd'), workdir)
  msg = str(e.value)
  assert "stage 'distilled'" in msg and "method: 'kd' -> 'dkd'" in msg and '--overwrite' in msg
  assert "stage 'teacher'" not in msg  # unchanged stages are fine to reuse
  with pytest.raises(rundir.StageMismatch, match=r"seed: 0 -> 1"):
    job.run_job(tiny_job('seed=1'), workdir)
  assert _snapshot(workdir) == before  # nothing written, nothing re-stamped

  rep = job.run_job(tiny_job('method=dkd'), workdir, overwrite=True)
  assert rep['method'] == 'dkd'
  replaced = os.listdir(os.path.join(workdir, rundir.REPLACED_DIR))
  assert len(replaced) == 1
  old = os.path.join(workdir, rundir.REPLACED_DIR, replaced[0])
  assert rundir.read_final(os.path.join(old, 'distilled')) == kd_final  # kept, not deleted
  assert json.loads(open(os.path.join(old, 'report.json')).read())['method'] == 'kd'
  new_final = rundir.read_final(os.path.join(workdir, 'distilled'))
  assert new_final['config_digest'] != kd_final['config_digest']
  # The reused stages were read back, not retrained.
  for stage in ('teacher', 'student'):
    assert {k: v for k, v in _snapshot(os.path.join(workdir, stage)).items()} == {
        k[len(stage) + 1:]: v for k, v in before.items() if k.startswith(stage + os.sep)}


def test_moved_workdir_is_still_the_same_run(finished_job, tmp_path, monkeypatch):
  moved = str(tmp_path / 'elsewhere' / 'W')
  shutil.copytree(finished_job[0], moved)
  monkeypatch.setattr(train, '_train', lambda *a, **k: pytest.fail('a finished stage retrained'))
  rep = job.run_job(tiny_job(), moved)
  assert rep['distilled_acc'] == finished_job[1]['distilled_acc']
  final = rundir.read_final(os.path.join(finished_job[0], 'distilled'))
  assert final['teacher']['checkpoint'] == 'stage:teacher' and final['teacher']['kind'] == 'run'
  assert final['teacher']['step'] == 2 and final['teacher']['config_digest']


def test_second_process_on_a_workdir_stops_at_once(finished_job, tmp_path):
  workdir = str(tmp_path / 'W')
  shutil.copytree(finished_job[0], workdir)
  holder = subprocess.Popen(
      [sys.executable, '-c', textwrap.dedent(f'''
          import sys, time
          from lkd_jax import lock
          lock.acquire({workdir!r}); print('held', flush=True); time.sleep(120)''')],
      cwd=ROOT, stdout=subprocess.PIPE, text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  try:
    assert holder.stdout.readline().strip() == 'held'
    before = _snapshot(workdir)
    with pytest.raises(lock.WorkdirLocked, match=rf'in use by another run: host .*pid {holder.pid}'):
      job.run_job(tiny_job('method=dkd'), workdir, overwrite=True)
    with pytest.raises(lock.WorkdirLocked, match=rf'pid {holder.pid}'):
      train.train_and_evaluate(tiny_run_config(), workdir)
    assert _snapshot(workdir) == before
  finally:
    holder.kill()
    holder.wait()
  # The holder died without releasing: its lock is stale and taken over.
  assert os.path.exists(os.path.join(workdir, lock.LOCK_FILE))
  with lock.hold(workdir):
    assert json.loads(open(os.path.join(workdir, lock.LOCK_FILE)).read())['pid'] == os.getpid()
  assert not os.path.exists(os.path.join(workdir, lock.LOCK_FILE))


def test_nan_at_step_one_is_never_checkpointed_or_finished(tmp_path):
  cfg = tiny_run_config(checkpoint_every=1, total_steps=3, **{
      'optim.lr': 1e39, 'optim.warmup_steps': 0, 'optim.grad_clip': 0.0})
  with pytest.raises(train.NonFiniteError, match=r'at step 1 .*updated state NaN/inf.*no checkpoint'):
    train.train_and_evaluate(cfg, str(tmp_path / 'run'))
  assert checkpoints.latest_step(str(tmp_path / 'run' / 'checkpoints')) is None
  assert rundir.read_final(str(tmp_path / 'run')) is None
  # In a job, the NaN teacher stage is not recorded as finished, and nothing after it runs.
  c = tiny_job(**{'optim.lr': 1e39, 'optim.warmup_steps': 0, 'optim.grad_clip': 0.0})
  with pytest.raises(train.NonFiniteError):
    job.run_job(c, str(tmp_path / 'W'))
  assert rundir.read_final(str(tmp_path / 'W' / 'teacher')) is None
  assert not (tmp_path / 'W' / 'student').exists()


def test_unfinished_teacher_is_refused_unless_allowed(finished_job, tmp_path):
  run = str(tmp_path / 'teacher')
  shutil.copytree(os.path.join(finished_job[0], 'teacher'), run)
  cfg = tiny_run_config(method='kd', **{'teacher.name': 'resnet_atto', 'teacher.checkpoint': run})
  teacher.check(cfg, str(tmp_path / 'student'))  # finished: accepted
  os.remove(os.path.join(run, 'final_metrics.json'))  # as if cut before its end
  with pytest.raises(SetupError, match=r'not finished: it has no final_metrics.json.*allow_partial'):
    train.train_and_evaluate(cfg, str(tmp_path / 'student'))
  assert not (tmp_path / 'student').exists()
  cfg.teacher.allow_partial = True
  teacher.check(cfg, str(tmp_path / 'student'))
  bad = tiny_run_config(method='kd', **{'teacher.name': 'slak_atto', 'teacher.checkpoint': run})
  with pytest.raises(SetupError, match=r"trained model 'resnet_atto', but teacher.name is 'slak_atto'"):
    teacher.check(bad, str(tmp_path / 'student'))


@pytest.mark.parametrize('arg, overrides, message', [
    ('method=telepathy', {}, r"stage 'distilled': Unknown method 'telepathy'"),
    ('student=resnet5000', {}, r"stage 'student': Unknown model 'resnet5000'"),
    ('method=fd,fd_stages=stage9', {}, r"stage 'distilled': fd_stages .*stage9"),
    ('', {'teacher.checkpoint': '/no/such/teacher.pth'},
     r"stage 'distilled': Teacher checkpoint /no/such/teacher.pth does not exist"),
    ('', {'stage_overrides.student.total_steps': -1}, r"stage 'student': The run has no steps"),
    ('batch=12', {}, r"stage 'teacher': batch_size=12 must be a positive multiple of the 8 devices"),
])
def test_job_is_validated_whole_before_anything_is_written(tmp_path, arg, overrides, message):
  with pytest.raises(SetupError, match=message):
    job.run_job(tiny_job(arg, **overrides), str(tmp_path / 'W'))
  assert not (tmp_path / 'W').exists()


def _cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', 'lkd_jax.main', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('args, rc, message', [
    (['--config=configs/demo.py', '--workdir=W', '--config.optim.nosuch=1'], 2,
     "unknown config key 'optim.nosuch' in --config.optim.nosuch=1; keys of optim: b1, b2"),
    (['--config=configs/demo.py:nosuch=1', '--workdir=W'], 2,
     "Unknown config argument 'nosuch'; known: batch"),
    (['--config=configs/demo.py:steps=0', '--workdir=W'], 2, 'steps=0 must be positive'),
    (['--config=configs/demo.py:teacher_steps=-5', '--workdir=W'], 2,
     'teacher_steps=-5 must be positive'),
    (['--config=configs/nope.py', '--workdir=W'], 2,
     "cannot load the config file configs/nope.py: [Errno 2] No such file"),
    (['--help', '--config=configs/demo.py'], 0, 'teacher_steps'),
])
def test_command_line_errors_are_one_line(args, rc, message):
  out = _cli(*args)
  assert out.returncode == rc, out.stderr
  text = out.stdout + out.stderr
  assert message in text and 'Traceback' not in text
  assert not os.path.exists(os.path.join(ROOT, 'W'))


def test_setup_error_in_a_run_is_one_line(tmp_path):
  out = _cli('--config=configs/slak_kd.py:teacher=slak_atto,student=resnet_atto,method=kd,'
             'mock=16,teacher_ckpt=/no/such/ckpt.pth', f'--workdir={tmp_path / "W"}')
  assert out.returncode == 1
  assert 'error: Teacher checkpoint /no/such/ckpt.pth does not exist' in out.stderr
  assert 'Traceback' not in out.stderr and not (tmp_path / 'W').exists()


@pytest.fixture
def small_disk(tmp_path):
  """A 3 MiB tmpfs (root only): room for a few tiny checkpoints, then 'No space left on device'."""
  mount = tmp_path / 'disk'
  mount.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', str(mount)],
                    capture_output=True).returncode:
    pytest.skip('mounting a small tmpfs needs root')
  yield mount
  subprocess.run(['umount', '-l', str(mount)], check=False)


@pytest.mark.heavy
def test_full_disk_is_one_line_and_keeps_the_complete_checkpoints(small_disk):
  workdir = small_disk / 'W'
  out = _cli('--config=configs/demo.py:teacher=resnet_atto,teacher_steps=60,teacher_num_train=32,'
             'batch=16', f'--workdir={workdir}', '--config.checkpoint_every=1',
             '--config.keep_checkpoints=100', timeout=300)
  assert out.returncode == 1
  errors = [l for l in out.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and errors[0].startswith('error: Writing a checkpoint to ')
  assert 'No space left on device' in errors[0]
  assert 'rerun the same command to resume' in errors[0] and 'Traceback' not in out.stderr
  last = int(errors[0].split('the last complete checkpoint, step ')[1].split(',')[0])
  assert checkpoints.latest_step(str(workdir / 'teacher' / 'checkpoints')) == last
  assert rundir.read_final(str(workdir / 'teacher')) is None


def test_teacher_at_chance_stops_distillation_before_anything_is_written(finished_job, tmp_path):
  run = os.path.join(finished_job[0], 'teacher')  # 2 steps: at chance on the glyph pairs
  cfg = tiny_run_config(method='kd', **{'teacher.name': 'resnet_atto', 'teacher.checkpoint': run,
                                        'teacher.check_batches': 2, 'teacher.check_min_accuracy': -1.0})
  with pytest.raises(SetupError, match=r'The teacher resnet_atto scores .* it was loaded wrongly'):
    train.train_and_evaluate(cfg, str(tmp_path / 'student'))
  assert not (tmp_path / 'student').exists()


def test_configured_evals_land_in_final_metrics(tmp_path):
  import ml_collections
  cfg = tiny_run_config(evals='synthetic+synthetic_c', total_steps=2)
  cfg.eval_options = ml_collections.ConfigDict({'corruptions': ('contrast',), 'severities': (1, 5)})
  final = train.train_and_evaluate(cfg, str(tmp_path / 'run'))
  evals = rundir.read_final(str(tmp_path / 'run'))['evals']
  assert evals == json.loads(json.dumps(final['evals']))
  assert evals['raw']['synthetic']['top1'] == pytest.approx(final['accuracy'])
  assert set(evals['raw']['synthetic_c']['error']) == {'contrast'}


def test_a_key_added_later_at_its_default_keeps_older_runs_the_same_run():
  old = tiny_run_config().to_dict()
  del old['target_accuracy']  # recorded before the key existed
  assert rundir.differing_keys(old, tiny_run_config().to_dict()) == []
  assert rundir.differing_keys(old, tiny_run_config(target_accuracy=0.5, eval_every=2).to_dict()) == [
      "eval_every: '<absent>' -> 2", "eval_every_epochs: '<absent>' -> 0.0",
      "target_accuracy: '<absent>' -> 0.5"]
  # With a target, how often the run evaluates decides where it ends: no longer resume-neutral.
  a, b = (tiny_run_config(target_accuracy=0.5, eval_every=e).to_dict() for e in (2, 3))
  assert rundir.differing_keys(a, b) == ['eval_every: 2 -> 3']
  assert rundir.differing_keys(tiny_run_config(eval_every=2).to_dict(),
                               tiny_run_config(eval_every=3).to_dict()) == []
