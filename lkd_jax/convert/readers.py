"""Checkpoint readers: .pth (torch's zip format, read without torch and without running code from it),
.npz and .safetensors."""
from __future__ import annotations

import argparse
import collections
import pickle
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import ml_dtypes
import numpy as np

from lkd_jax.errors import SetupError

# Official containers, in the order the paper's scripts read them (SLaK/ConvNeXt: 'model';
# CSWin: 'state_dict_ema'); `key=` picks one explicitly.
CONTAINER_KEYS = ('model', 'state_dict_ema', 'state_dict', 'model_ema')
DROPPED_SUFFIXES = ('num_batches_tracked',)
PTH_SUFFIXES = ('.pth', '.pt', '.bin', '.tar', '.ckpt')
SUFFIXES = PTH_SUFFIXES + ('.npz', '.safetensors')

# torch.<X>Storage classes and torch.<dtype> globals, as the pickle names them.
_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'HalfStorage': np.float16, 'BFloat16Storage': ml_dtypes.bfloat16,
    'DoubleStorage': np.float64, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
    'UntypedStorage': np.uint8}
_TORCH_DTYPES = {
    'float32': np.float32, 'float': np.float32, 'float16': np.float16, 'half': np.float16,
    'bfloat16': ml_dtypes.bfloat16, 'float64': np.float64, 'double': np.float64, 'int64': np.int64,
    'long': np.int64, 'int32': np.int32, 'int': np.int32, 'int16': np.int16, 'short': np.int16,
    'int8': np.int8, 'uint8': np.uint8, 'uint16': np.uint16, 'uint32': np.uint32, 'uint64': np.uint64,
    'bool': np.bool_}
# torch.save's pre-1.6 format starts with this number, pickled.
_LEGACY_MAGIC = (0x1950a86a20f9469cfc6c).to_bytes(10, 'little')


class _Dtype(NamedTuple):
  """What a storage class or torch dtype unpickles to: a name and its numpy dtype, nothing callable."""
  name: str
  dtype: np.dtype


class _Storage(NamedTuple):
  """One storage record of the archive: its raw bytes and the dtype it was saved with."""
  key: str
  raw: bytes
  dtype: np.dtype


def _text(value: Any) -> str:
  return value.decode('ascii') if isinstance(value, bytes) else str(value)


def _ints(value: Any, what: str) -> tuple[int, ...]:
  values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
  if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
    raise ValueError(f'tensor {what} {value!r:.100} is not non-negative integers')
  return values


def _tensor(storage: _Storage, offset: Any, size: Any, stride: Any, dtype: np.dtype) -> np.ndarray:
  """A fresh array for a (storage, offset, size, stride) view, bounds-checked before numpy reads it."""
  dtype = np.dtype(dtype)
  (offset,), size, stride = _ints(offset, 'offset'), _ints(size, 'size'), _ints(stride, 'stride')
  if len(size) != len(stride):
    raise ValueError(f'tensor size {size} and stride {stride} differ in length')
  if len(storage.raw) % dtype.itemsize:
    raise ValueError(f'storage {storage.key} holds {len(storage.raw)} bytes, not a whole number of {dtype}')
  if 0 in size:
    return np.zeros(size, dtype)
  flat = np.frombuffer(storage.raw, dtype)
  end = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
  if end > flat.size:  # as_strided would read past the storage otherwise.
    raise ValueError(f'tensor view ends at element {end}, past storage {storage.key} ({flat.size} elements)')
  return np.array(np.lib.stride_tricks.as_strided(flat[offset:], size, [s * dtype.itemsize for s in stride]),
                  order='C')


class Namespace(argparse.Namespace):
  """argparse.Namespace as a checkpoint holds it (SLaK/ConvNeXt/CSWin save their args): object.__new__
  plus its attributes from the pickled state dict, and nothing else runs."""

  def __setstate__(self, state: Any) -> None:
    if not (isinstance(state, dict) and all(isinstance(k, str) for k in state)):
      raise ValueError(f'argparse.Namespace state {state!r:.100} is not a dict of attributes')
    self.__dict__.update(state)


class _CheckpointUnpickler(pickle.Unpickler):
  """Unpickles torch.save's data.pkl admitting only tensors, containers, numbers, strings and
  argparse.Namespace; every other global is refused before anything of it is imported or run."""

  def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str, path: Path):
    super().__init__(file, encoding='utf-8')
    self.archive, self.prefix, self.path = archive, prefix, path
    self.storages: dict[str, _Storage] = {}
    # A pickle's BUILD can set attributes on what find_class returns; bound methods, builtin types and
    # _Dtype tuples refuse them, and Namespace's own __setstate__ makes BUILD on that class fail.
    rebuilders = {'_rebuild_tensor_v2': self.rebuild_tensor_v2, '_rebuild_tensor_v3': self.rebuild_tensor_v3,
                  '_rebuild_parameter': self.rebuild_parameter,
                  '_rebuild_parameter_with_state': self.rebuild_parameter}
    dtypes = {**_STORAGE_DTYPES, **_TORCH_DTYPES}
    self.admitted: dict[tuple[str, str], Any] = {
        **{('torch._utils', k): v for k, v in rebuilders.items()},
        **{('torch', k): _Dtype(k, np.dtype(v)) for k, v in dtypes.items()},
        ('torch.storage', 'UntypedStorage'): _Dtype('UntypedStorage', np.dtype(np.uint8)),
        ('collections', 'OrderedDict'): collections.OrderedDict,
        ('argparse', 'Namespace'): Namespace,
        ('_codecs', 'encode'): self.latin1_bytes}  # how protocol 2 pickles bytes.

  def find_class(self, module: str, name: str) -> Any:
    """The admitted object for `module.name`; SetupError, without importing it, for anything else."""
    found = self.admitted.get((module, name))
    if found is None:
      raise SetupError(f'{self.path}: refused to load {module}.{name} from its pickle: lkd_jax never '
                       'executes code from checkpoints and reads only tensors, numbers, strings, lists, '
                       'dicts and argparse.Namespace. If this is an official checkpoint, please report it.')
    return found

  def persistent_load(self, pid: Any) -> _Storage:
    """The storage a ('storage', type, key, location, numel) record names, read once from the zip."""
    if not (isinstance(pid, tuple) and len(pid) == 5 and _text(pid[0]) == 'storage'
            and isinstance(pid[1], _Dtype)):
      raise ValueError(f'unexpected persistent id {pid!r:.100}')
    key = _text(pid[2])
    if key not in self.storages:
      self.storages[key] = _Storage(key, self.archive.read(f'{self.prefix}data/{key}'), pid[1].dtype)
    return self.storages[key]

  def rebuild_tensor_v2(self, storage: _Storage, offset: Any, size: Any, stride: Any, *_: Any) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2: the view in the storage's own dtype."""
    if not isinstance(storage, _Storage):
      raise ValueError('tensor rebuilt from something other than a storage')
    return _tensor(storage, offset, size, stride, storage.dtype)

  def rebuild_tensor_v3(self, storage: _Storage, offset: Any, size: Any, stride: Any, _requires_grad: Any,
                        _hooks: Any, dtype: _Dtype, *_: Any) -> np.ndarray:
    """torch._utils._rebuild_tensor_v3: the view in an explicit dtype."""
    if not (isinstance(storage, _Storage) and isinstance(dtype, _Dtype)):
      raise ValueError('tensor rebuilt from something other than a storage and a dtype')
    return _tensor(storage, offset, size, stride, dtype.dtype)

  def rebuild_parameter(self, data: Any, *_: Any) -> Any:
    """torch._utils._rebuild_parameter(_with_state): the tensor itself."""
    return data

  def latin1_bytes(self, text: Any, encoding: Any = 'latin1') -> bytes:
    """_codecs.encode, admitted only as protocol 2 uses it: latin1 text to bytes."""
    if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
      raise ValueError('_codecs.encode is admitted only for bytes pickled as latin1 text')
    return text.encode('latin1')


def _is_legacy_torch(path: Path) -> bool:
  with open(path, 'rb') as f:
    head = f.read(32)
  if _LEGACY_MAGIC in head:
    return True
  try:  # torch.save's oldest format: a tar with 'storages', 'tensors' and 'pickle' members.
    with tarfile.open(path) as tar:
      return 'pickle' in tar.getnames()
  except (tarfile.TarError, OSError):
    return False


def _archive_prefix(archive: zipfile.ZipFile, path: Path) -> str:
  pickles = [n for n in archive.namelist() if n == 'data.pkl' or n.endswith('/data.pkl')]
  if not pickles:
    raise SetupError(f'{path}: not a PyTorch checkpoint: a zip archive without data.pkl (torch.save writes '
                     'one). Pass a file written by torch.save, or an .npz/.safetensors.')
  return min(pickles, key=len)[:-len('data.pkl')]


def _read_pth(path: Path) -> Any:
  if not zipfile.is_zipfile(path):
    if _is_legacy_torch(path):
      raise SetupError(f'{path}: legacy (pre-1.6) torch.save format, which lkd_jax does not read. Re-save it '
                       'with torch >= 1.6 (torch.save(torch.load(f), g)) or convert it to .safetensors.')
    raise SetupError(f'{path}: not a PyTorch checkpoint: not a zip archive (torch.save writes one since '
                     'torch 1.6). Check the file (an interrupted download?) or pass an .npz/.safetensors.')
  try:
    with zipfile.ZipFile(path) as archive:
      prefix = _archive_prefix(archive, path)
      byteorder = f'{prefix}byteorder'
      if byteorder in archive.namelist() and archive.read(byteorder).strip() != b'little':
        raise SetupError(f'{path}: a big-endian PyTorch checkpoint, which lkd_jax does not read. Re-save it '
                         'on a little-endian machine (x86, ARM) or convert it to .safetensors.')
      with archive.open(f'{prefix}data.pkl') as f:
        return _CheckpointUnpickler(f, archive, prefix, path).load()
  except SetupError:
    raise
  except Exception as e:  # a damaged archive or pickle fails in many ways; none of them is a bug here.
    raise SetupError(f'{path}: corrupt PyTorch checkpoint ({type(e).__name__}: {e}). Download or save it '
                     'again.') from e


def _read_npz(path: Path) -> dict[str, np.ndarray]:
  if not zipfile.is_zipfile(path):
    raise SetupError(f'{path}: not a valid .npz (not a zip archive). Write it with numpy.savez.')
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except ValueError as e:
    if 'allow_pickle' not in str(e):
      raise SetupError(f'{path}: not a valid .npz ({e}). Write it with numpy.savez.') from e
    raise SetupError(f'{path}: the .npz holds object arrays, which lkd_jax does not unpickle. Save plain '
                     'numeric arrays with numpy.savez.') from e
  except Exception as e:  # zipfile, zlib and numpy's format reader all raise their own types.
    raise SetupError(f'{path}: not a valid .npz ({type(e).__name__}: {e}). Write it with numpy.savez.') from e


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  try:
    return load_file(str(path))
  except Exception as e:  # safetensors raises its own SafetensorError (and OSError, ValueError).
    raise SetupError(f'{path}: not a valid .safetensors file ({type(e).__name__}: {e}). Download or write '
                     'it again.') from e


_READERS: dict[str, Callable[[Path], Any]] = {
    '.npz': _read_npz, '.safetensors': _read_safetensors, **{s: _read_pth for s in PTH_SUFFIXES}}


def read_checkpoint(path: str | Path) -> Mapping[str, Any]:
  """Reads a raw checkpoint object (a possibly nested mapping) from .pth/.pt/.bin, .npz or .safetensors."""
  path = Path(path)
  if not path.exists():
    raise SetupError(f'{path}: checkpoint does not exist. Check the path.')
  if path.is_dir():
    raise SetupError(f'{path}: a directory without model.json and variables.npz (not written by python -m '
                     f'lkd_jax.convert). Pass such a directory or a checkpoint file ({", ".join(SUFFIXES)}).')
  reader = _READERS.get(path.suffix.lower())
  if reader is None:
    raise SetupError(f'{path}: unknown checkpoint suffix {path.suffix!r}; accepted: {", ".join(SUFFIXES)}, '
                     'or a directory written by python -m lkd_jax.convert.')
  return reader(path)


def unwrap(ckpt: Mapping[str, Any], key: str | None = None, prefix: str = '') -> dict[str, np.ndarray]:
  """Flat {state_dict key: array} from an official container: picks `key` or the first of
  CONTAINER_KEYS present, strips 'module.' (and `prefix`, e.g. 'sd/'), drops num_batches_tracked."""
  if key is not None:
    ckpt = ckpt[key]
  else:
    while isinstance(ckpt, Mapping):
      inner = next((k for k in CONTAINER_KEYS if isinstance(ckpt.get(k), Mapping)), None)
      if inner is None:
        break
      ckpt = ckpt[inner]
  out = {}
  for k, v in ckpt.items():
    if prefix:
      if not k.startswith(prefix):
        continue
      k = k[len(prefix):]
    if k.startswith('module.'):
      k = k[len('module.'):]
    if k.endswith(DROPPED_SUFFIXES):
      continue
    out[k] = np.asarray(v)
  return out
