""".pth reader without torch: torch's own arrays from committed fixtures, refused pickles, one-line errors."""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from lkd_jax.convert import load_teacher, read_checkpoint, unwrap
from lkd_jax.convert.rules import to_torch, torch_key, variables_of
from lkd_jax.convert.teacher import abstract_model
from lkd_jax.errors import SetupError

FIXTURES = Path(__file__).parent / 'fixtures'
_spec = importlib.util.spec_from_file_location('make_fixtures', FIXTURES / 'make_fixtures.py')
make_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_fixtures)
STYLES = ('slak_style', 'cswin_style')


def numpy_array(obj: Any) -> np.ndarray | None:
  """The reader's tensors are numpy arrays."""
  return obj if isinstance(obj, np.ndarray) else None


def normalized_skeleton(ckpt: Any, as_array: Any) -> tuple[Any, dict[str, np.ndarray]]:
  """make_fixtures.skeleton as it reads back from JSON, and the arrays."""
  arrays: dict[str, np.ndarray] = {}
  return json.loads(json.dumps(make_fixtures.skeleton(ckpt, as_array, arrays))), arrays


def assert_same_arrays(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
  """Same keys, dtypes, shapes and values (bfloat16 compared as the float32 torch wrote for it)."""
  assert set(got) == set(want)
  for k, w in want.items():
    g = got[k].astype(np.float32) if got[k].dtype == ml_dtypes.bfloat16 else got[k]
    assert g.dtype == w.dtype and g.shape == w.shape, k
    np.testing.assert_array_equal(g, w, err_msg=k)


# A writer of torch.save's zip format without torch, for pickles no torch would write.
class Global(NamedTuple):
  """A `module.name` global, written as the pickle's GLOBAL opcode."""
  module: str
  name: str

  def __call__(self) -> None:  # save_reduce wants a callable; nothing calls it.
    raise AssertionError


class Call(NamedTuple):
  """`func(*args)` in the pickle (REDUCE)."""
  func: Global
  args: tuple

  def __reduce__(self) -> tuple[Any, ...]:
    return self.func, self.args


class StorageRef(NamedTuple):
  """A persistent id ('storage', storage class, key, location, numel)."""
  pid: tuple


class _TorchPickler(pickle._Pickler):
  dispatch = dict(pickle._Pickler.dispatch)
  dispatch[Global] = lambda self, obj: self.write(f'c{obj.module}\n{obj.name}\n'.encode())

  def persistent_id(self, obj: Any) -> Any:
    return obj.pid if isinstance(obj, StorageRef) else None


_STORAGE_NAMES = {np.dtype(np.float32): 'FloatStorage', np.dtype(np.int64): 'LongStorage'}


def zip_bytes(records: dict[str, bytes]) -> bytes:
  """A zip archive holding `records`."""
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, 'w') as z:
    for name, data in records.items():
      z.writestr(name, data)
  return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
  path.write_bytes(data)
  return path


def write_pth(path: Path, obj: Any) -> Path:
  """torch.save's zip layout for `obj`, float32/int64 arrays becoming _rebuild_tensor_v2 calls."""
  storages: dict[str, bytes] = {}

  def tensor(a: np.ndarray) -> Call:
    key = str(len(storages))
    storages[key] = np.ascontiguousarray(a).tobytes()
    ref = StorageRef(('storage', Global('torch', _STORAGE_NAMES[a.dtype]), key, 'cpu', a.size))
    stride = tuple(s // a.itemsize for s in np.ascontiguousarray(a).strides)
    return Call(Global('torch._utils', '_rebuild_tensor_v2'),
                (ref, 0, a.shape, stride, False, Call(Global('collections', 'OrderedDict'), ())))

  def walk(o: Any) -> Any:
    if isinstance(o, np.ndarray):
      return tensor(o)
    return {k: walk(v) for k, v in o.items()} if isinstance(o, dict) else o

  buf = io.BytesIO()
  _TorchPickler(buf, protocol=2).dump(walk(obj))
  records = {f'archive/data/{key}': raw for key, raw in storages.items()}
  return _write(path, zip_bytes({'archive/data.pkl': buf.getvalue(), 'archive/byteorder': b'little', **records}))


@pytest.mark.parametrize('style', STYLES)
def test_fixture_reads_as_torch_read_it(style):
  """Every tensor equals torch's tensor.numpy() bit for bit, in dtype and shape; the rest equals too."""
  with np.load(FIXTURES / f'{style}.expected.npz') as f:
    want = {k: f[k] for k in f.files}
  want_skeleton = json.loads(str(want.pop(make_fixtures.SKELETON_KEY)))
  got_skeleton, got = normalized_skeleton(read_checkpoint(FIXTURES / f'{style}.pth'), numpy_array)
  assert got_skeleton == want_skeleton
  assert_same_arrays(got, want)


def test_slak_style_dtypes_views_and_namespace():
  ckpt = read_checkpoint(FIXTURES / 'slak_style.pth')
  sd = ckpt['model']
  assert ckpt['epoch'] == 3 and isinstance(ckpt['args'], argparse.Namespace)
  assert ckpt['args'].kernel_size == [51, 49, 47, 13, 5] and ckpt['args'].finetune is None
  assert {k: sd[k].dtype for k in ('extra.half', 'extra.bfloat16', 'norm.num_batches_tracked', 'extra.bool')} == {
      'extra.half': np.float16, 'extra.bfloat16': ml_dtypes.bfloat16, 'norm.num_batches_tracked': np.int64,
      'extra.bool': np.bool_}
  base = np.arange(24, dtype=np.float32).reshape(4, 6) / 7
  np.testing.assert_array_equal(sd['shared.full'], base)
  np.testing.assert_array_equal(sd['shared.rows'], base[1:3])
  np.testing.assert_array_equal(sd['shared.strided'], base[1:, ::2])
  np.testing.assert_array_equal(sd['extra.head_t'], sd['head.weight'].T)
  assert all(a.flags.c_contiguous and a.flags.writeable for a in sd.values())
  sd['shared.full'][:] = 0  # tensors that shared a storage are independent arrays now.
  assert sd['shared.rows'].min() > 0


def test_unwrap_official_containers():
  slak = unwrap(read_checkpoint(FIXTURES / 'slak_style.pth'))
  assert 'norm.running_var' in slak and not any(k.endswith('num_batches_tracked') for k in slak)
  cswin = read_checkpoint(FIXTURES / 'cswin_style.pth')
  ema = unwrap(cswin)
  assert set(ema) == {k for k in cswin['state_dict_ema'] if not k.endswith('num_batches_tracked')}
  np.testing.assert_array_equal(ema['head.weight'], cswin['state_dict_ema']['head.weight'])
  assert set(unwrap(cswin, key='state_dict')) == set(ema)  # 'module.' stripped.


def test_load_teacher_from_pth_without_torch(tmp_path):
  """A .pth goes through load_teacher to the same variables as the same state_dict in an .npz."""
  model = abstract_model('resnet_atto', 10)
  rng = np.random.default_rng(0)
  sd = {torch_key(p): np.ascontiguousarray(to_torch(p, rng.uniform(0.5, 1.5, v.get_value().shape)))
        .astype(np.float32) for p, v in nnx.to_flat_state(variables_of(model))}
  np.savez(tmp_path / 'ckpt.npz', **sd)
  write_pth(tmp_path / 'ckpt.pth', {'model': sd, 'epoch': 3})
  from_pth = load_teacher(str(tmp_path / 'ckpt.pth'), 'resnet_atto', 10)
  from_npz = load_teacher(str(tmp_path / 'ckpt.npz'), 'resnet_atto', 10)
  for (p, a), (q, b) in zip(nnx.to_flat_state(variables_of(from_pth)),
                            nnx.to_flat_state(variables_of(from_npz))):
    assert p == q and np.array_equal(a.get_value(), b.get_value())


def test_malicious_fixture_is_refused_without_running_it(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SetupError, match=r'refused to load posix\.system .*never executes code') as e:
    read_checkpoint(FIXTURES / 'malicious.pth')
  assert 'report it' in str(e.value)
  assert not (tmp_path / make_fixtures.MARKER).exists()


class _NoTorch(Exception):
  pass


class _PlainButNoTorch(pickle.Unpickler):
  """Python's default unpickler, stopped at the first torch global."""

  def find_class(self, module: str, name: str) -> Any:
    if module.startswith('torch'):
      raise _NoTorch(f'{module}.{name}')
    return super().find_class(module, name)


def test_malicious_fixture_is_live(tmp_path, monkeypatch):
  """The fixture would run its command under a plain unpickler: the refusal above is what stops it."""
  monkeypatch.chdir(tmp_path)
  with zipfile.ZipFile(FIXTURES / 'malicious.pth') as z:
    data = z.read('malicious/data.pkl')
  with pytest.raises(_NoTorch):  # stops at the tensor after the payload, not importing torch.
    _PlainButNoTorch(io.BytesIO(data)).load()
  assert (tmp_path / make_fixtures.MARKER).exists()


class _Reduce:
  def __init__(self, func: Any, *args: Any):
    self.func, self.args = func, args

  def __reduce__(self) -> tuple[Any, ...]:
    return self.func, self.args


class _Arbitrary:
  pass


@pytest.mark.parametrize('payload', [
    Global('os', 'system'), Global('posix', 'system'), Global('builtins', 'eval'), Global('__builtin__', 'exec'),
    Global('subprocess', 'Popen'), Global('torch.nn.modules.linear', 'Linear'),
    Global('numpy.core.multiarray', '_reconstruct'), Global('torch._utils', '_rebuild_device_tensor_from_numpy'),
], ids=lambda g: f'{g.module}.{g.name}')
def test_refuses_every_other_global(tmp_path, monkeypatch, payload):
  monkeypatch.chdir(tmp_path)
  path = write_pth(tmp_path / 'evil.pth', {'model': {'w': np.ones(2, np.float32)},
                                            'x': Call(payload, (f'touch {make_fixtures.MARKER}',))})
  name = f'{payload.module}.{payload.name}'
  with pytest.raises(SetupError, match=re.escape(f'refused to load {name} from its pickle')):
    read_checkpoint(path)
  assert not (tmp_path / make_fixtures.MARKER).exists()


@pytest.mark.parametrize('protocol', [2, 4])
def test_refuses_pickled_code_and_classes_at_any_protocol(tmp_path, monkeypatch, protocol):
  monkeypatch.chdir(tmp_path)
  for obj, name in ((_Reduce(os.system, f'touch {make_fixtures.MARKER}'), f'{os.name}.system'),
                    (_Reduce(eval, f'open("{make_fixtures.MARKER}", "w")'), r'(builtins|__builtin__)\.eval'),
                    (_Arbitrary(), f'{__name__}._Arbitrary')):
    with zipfile.ZipFile(tmp_path / 'evil.pth', 'w') as z:
      z.writestr('archive/data.pkl', pickle.dumps({'model': obj}, protocol=protocol))
    with pytest.raises(SetupError, match=f'refused to load {name}'):
      read_checkpoint(tmp_path / 'evil.pth')
  assert not (tmp_path / make_fixtures.MARKER).exists()


def test_tensor_views_past_their_storage_are_refused(tmp_path):
  """A crafted size/stride must not make numpy read memory outside the storage."""
  ref = StorageRef(('storage', Global('torch', 'FloatStorage'), '0', 'cpu', 2))
  buf = io.BytesIO()
  _TorchPickler(buf, protocol=2).dump(
      Call(Global('torch._utils', '_rebuild_tensor_v2'), (ref, 1, (4,), (1,), False, None)))
  path = _write(tmp_path / 'oob.pth', zip_bytes({'x/data.pkl': buf.getvalue(),
                                                 'x/data/0': np.ones(2, np.float32).tobytes()}))
  with pytest.raises(SetupError, match='corrupt PyTorch checkpoint.*past storage 0'):
    read_checkpoint(path)


@pytest.mark.parametrize('make,message', [
    (lambda d: d / 'missing', 'missing: checkpoint does not exist'),
    (lambda d: d / 'missing.pth', 'missing.pth: checkpoint does not exist'),
    (lambda d: d / 'missing.npz', 'missing.npz: checkpoint does not exist'),
    (lambda d: d, 'a directory without model.json and variables.npz'),
    (lambda d: _write(d / 'notes.pth', b'hello, not a checkpoint\n'),
     'notes.pth: not a PyTorch checkpoint: not a zip archive'),
    (lambda d: _write(d / 'random.npz', np.random.default_rng(0).bytes(256)), 'random.npz: not a valid .npz'),
    (lambda d: _write(d / 'random.safetensors', np.random.default_rng(0).bytes(256)),
     'random.safetensors: not a valid .safetensors'),
    (lambda d: _write(d / 'weights.h5', b'x'), r"unknown checkpoint suffix '\.h5'; accepted: \.pth, .*\.npz, "
                                               r'\.safetensors'),
    (lambda d: shutil.copy(FIXTURES / 'legacy.pth', d / 'legacy.pth'),
     r'legacy \(pre-1\.6\) .*torch\.save\(torch\.load\(f\), g\)'),
    (lambda d: _write(d / 'empty.pth', zip_bytes({'x/version': b'3'})), 'a zip archive without data.pkl'),
    (lambda d: _write(d / 'garbage.pth', zip_bytes({'x/data.pkl': b'\x80\x02}q\x00(garbage'})),
     'garbage.pth: corrupt PyTorch checkpoint'),
    (lambda d: _write(d / 'big.pth', zip_bytes({'x/data.pkl': pickle.dumps({}), 'x/byteorder': b'big'})),
     'big-endian'),
])
def test_one_line_actionable_errors(tmp_path, make, message):
  with pytest.raises(SetupError, match=message) as e:
    read_checkpoint(make(tmp_path))
  assert '\n' not in str(e.value) and 'unsafe' not in str(e.value)


def test_npz_and_safetensors_errors_name_the_fix(tmp_path):
  np.save(tmp_path / 'obj.npy', np.array([{'a': 1}], dtype=object))
  with zipfile.ZipFile(tmp_path / 'obj.npz', 'w') as z:
    z.write(tmp_path / 'obj.npy', 'obj.npy')
  with pytest.raises(SetupError, match='object arrays, which lkd_jax does not unpickle'):
    read_checkpoint(tmp_path / 'obj.npz')
  save_file({'w': np.ones(3, np.float32)}, str(tmp_path / 'ok.safetensors'))
  raw = (tmp_path / 'ok.safetensors').read_bytes()
  (tmp_path / 'cut.safetensors').write_bytes(raw[:len(raw) // 2])
  with pytest.raises(SetupError, match='cut.safetensors: not a valid .safetensors'):
    read_checkpoint(tmp_path / 'cut.safetensors')


@pytest.mark.parametrize('style', STYLES)
def test_reader_matches_torch_load(tmp_path, style):
  """Where torch is importable: the committed fixture and a fresh torch.save both read as torch reads them."""
  torch = pytest.importorskip('torch')
  torch.serialization.add_safe_globals([argparse.Namespace])
  fresh = tmp_path / f'{style}.pth'
  torch.save(getattr(make_fixtures, style)(), fresh)
  for path in (FIXTURES / f'{style}.pth', fresh):
    want_skeleton, want = normalized_skeleton(torch.load(path, weights_only=True), make_fixtures.torch_array)
    got_skeleton, got = normalized_skeleton(read_checkpoint(path), numpy_array)
    assert got_skeleton == want_skeleton
    assert_same_arrays(got, want)


def test_torch_load_would_run_the_malicious_fixture(tmp_path, monkeypatch):
  torch = pytest.importorskip('torch')
  monkeypatch.chdir(tmp_path)
  torch.load(FIXTURES / 'malicious.pth', weights_only=False)
  assert (tmp_path / make_fixtures.MARKER).exists()
