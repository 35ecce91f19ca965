"""Pod plans before a pod is booked: compile the real train step ahead of time for a TPU slice.

    JAX_PLATFORMS=cpu python -m lkd_jax.plan --topology v4-32 \\
      --config configs/slak_kd.py:teacher=slak_t,student=resnet50,method=kd,batch=1024

With libtpu installed (`pip install -e ".[tpu-plan]"`) XLA compiles for a TPU topology on a CPU host
(jax.experimental.topologies, as MaxText's train_compile): nothing is materialised, the state and the
batch are ShapeDtypeStructs. Prints each device's memory against the chip's HBM, FLOPs per step and
the model FLOP utilisation a target img/s would need; a plan that does not fit exits 1 naming the
fixes. `--topology cpu` plans for this host's CPU devices (tests; give --hbm_gib).
"""
from __future__ import annotations

import functools
import json
import math
import os
import sys
from typing import Any, NamedTuple

GIB = 2 ** 30


class Chip(NamedTuple):
  topology_prefix: str   # jax.experimental.topologies name prefix
  hbm_gib: float         # HBM per chip (one JAX device per chip)
  peak_tflops: float     # dense bf16 peak per chip
  cores_per_chip: int    # accelerator-type names count TensorCores (v4, v5p) or chips (v5e, v6e)
  dims: int              # 3-D (v4, v5p) or 2-D (v5e, v6e) torus


# Cloud TPU documentation: system architecture pages of each generation.
CHIPS = {'v4': Chip('v4', 32, 275, 2, 3), 'v5p': Chip('v5p', 95, 459, 2, 3),
         'v5e': Chip('v5e', 16, 197, 1, 2), 'v6e': Chip('v6e', 32, 918, 1, 2)}


def topology_name(accelerator: str) -> tuple[str, Chip]:
  """('v4:2x2x4', chip) for an accelerator type users know ('v4-32', 'v5e-16', 'v5litepod-16'), or
  a topology name given as it is ('v5e:4x4')."""
  name = accelerator.replace('v5litepod', 'v5e')
  if ':' in name:
    gen = name.split(':', 1)[0]
    if gen not in CHIPS:
      raise ValueError(f'Unknown TPU generation {gen!r}; known: {", ".join(CHIPS)}.')
    return name, CHIPS[gen]
  gen, _, count = name.partition('-')
  if gen not in CHIPS or not count.isdigit():
    raise ValueError(f'Unknown accelerator type {accelerator!r}: use <generation>-<size> with a '
                     f'generation in {", ".join(CHIPS)} (e.g. v4-32, v5e-16), or a topology such '
                     'as v5e:4x4.')
  chip = CHIPS[gen]
  chips = int(count) // chip.cores_per_chip
  if chips < 1 or chips & (chips - 1):
    raise ValueError(f'{accelerator}: {chips} chips is not a power of two.')
  shape = [1] * chip.dims
  for i in range(chips.bit_length() - 1):  # double the axes in turn: 2x2x1, 2x2x2, 2x2x4, 2x4x4, ...
    shape[i % chip.dims] *= 2
  shape = sorted(d for d in shape if d > 1) + [d for d in shape if d == 1]
  return f'{gen}:{"x".join(map(str, shape))}', chip


def tpu_devices(topology: str) -> list[Any]:
  """The devices of a TPU topology description (needs libtpu; no TPU needed)."""
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')  # else libtpu logs a host-lookup error
  # No TPU is opened: several planning processes (parallel tests) may load libtpu at once.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  try:
    from jax.experimental import topologies
    chip = CHIPS.get(topology.split(':', 1)[0])
    # v4/v5p: one JAX device per chip (megacore), as JAX sees the hardware; without it libtpu
    # describes each TensorCore as a device with the chip's HBM and peak (MaxText does the same).
    extra = {'chip_config_name': 'megacore'} if chip and chip.cores_per_chip == 2 else {}
    return list(topologies.get_topology_desc(platform='tpu', topology_name=topology,
                                             **extra).devices)
  except Exception as e:  # missing libtpu raises RuntimeError/ImportError; a bad shape, ValueError
    raise RuntimeError(f'Cannot describe TPU topology {topology!r} ({e}). Is libtpu installed '
                       '(pip install -e ".[tpu-plan]")?') from e


def abstract_run(config: Any, kern: Any) -> tuple[Any, Any, Any, Any, Any]:
  """(state, teacher state, graphs, tx, lr_fn) of `config` as ShapeDtypeStructs: nothing allocated."""
  import jax
  import jax.numpy as jnp
  from lkd_jax import models, optim, train
  from lkd_jax import teacher as teacher_lib
  from lkd_jax.distill import methods, projectors
  from lkd_jax.models.slak import merge_large_kernels

  method = methods.get(config.method)
  tx, lr_fn = optim.make(config, 1000, 1000.0)
  size = config.data.image_size
  box = {}

  def build():
    student = models.create(config.model.name, num_classes=config.num_classes, seed=config.seed,
                            kernels=kern, **config.model.kwargs)
    t_graph, t_state = None, None
    if method.needs_teacher:
      teacher = merge_large_kernels(models.create(
          config.teacher.name, num_classes=config.num_classes, kernels=kern,
          **config.teacher.kwargs), config.teacher.inference_form)
      t_graph, t_state = teacher_lib.freeze(teacher, jnp.dtype(config.teacher.dtype))
    projector = None
    if method.needs_projector:
      projector = methods.build_projector(config, projectors.feature_shapes(student, size),
                                          projectors.feature_shapes((t_graph, t_state), size),
                                          config.seed)
    state, graphs = train.init_state(config, student, projector, tx)
    box['graphs'] = graphs._replace(teacher=t_graph)
    return state, t_state, graphs.student_rest

  state, t_state, rest = jax.eval_shape(build)
  # The rng streams are closed over by the step: give them concrete (dummy) keys.
  rest = jax.tree.map(lambda s: jax.random.wrap_key_data(
      jnp.zeros(s.shape + (2,), jnp.uint32)) if jax.dtypes.issubdtype(
          s.dtype, jax.dtypes.prng_key) else jnp.zeros(s.shape, s.dtype), rest)
  return state, t_state, box['graphs']._replace(student_rest=rest), tx, lr_fn


def compile_step(config: Any, devices: list[Any], platform: str) -> tuple[Any, Any]:
  """(compiled train step, mesh) for `config` on `devices`, from abstract inputs only."""
  import jax
  import jax.numpy as jnp
  from lkd_jax import kernels, sharding, train
  from lkd_jax import step as step_lib

  config.compute_dtype = train.resolve_compute_dtype(config.compute_dtype, platform)
  config.num_classes = config.num_classes or 1000  # 0 = the dataset's, which a plan does not read
  mesh = sharding.make_mesh(devices, fsdp=config.mesh.fsdp)
  sharding.check_batch_size(config.batch_size, mesh)
  state, t_state, graphs, tx, lr_fn = abstract_run(config, kernels.resolve(config, platform))

  def placed(tree):
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree,
                        sharding.param_shardings(tree, mesh))
  size, batch_sh = config.data.image_size, sharding.batch_sharded(mesh)
  batch = {'image': jax.ShapeDtypeStruct((config.batch_size, size, size, 3), jnp.uint8,
                                         sharding=batch_sh),
           'label': jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=batch_sh)}
  state_sh = sharding.param_shardings(state, mesh)
  fn = jax.jit(functools.partial(step_lib.train_step, graphs=graphs, tx=tx, lr_fn=lr_fn, cfg=config),
               in_shardings=(state_sh, sharding.param_shardings(t_state, mesh), batch_sh),
               out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=(0,))
  return fn.lower(placed(state), placed(t_state), batch).compile(), mesh


def plan(config: Any, devices: list[Any], platform: str, *, hbm_gib: float,
         peak_tflops: float | None = None, img_per_sec: float = 0.0) -> dict[str, Any]:
  """The plan record: per-device memory (GiB) against `hbm_gib`, FLOPs per step, the MFU that
  `img_per_sec` would need; raises PlanDoesNotFit (naming fixes) when the memory exceeds it."""
  from lkd_jax import cost
  compiled, mesh = compile_step(config, devices, platform)
  m = compiled.memory_analysis()
  used = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes + m.generated_code_size_in_bytes)
  n = mesh.devices.size
  flops = cost.flops(compiled) * n
  record = {'devices': n, 'mesh': dict(mesh.shape), 'batch_size': config.batch_size,
            'per_device_batch': config.batch_size // n, 'compute_dtype': config.compute_dtype,
            'teacher_dtype': config.teacher.dtype,
            'per_device_gib': used / GIB, 'hbm_gib': hbm_gib,
            'arguments_gib': m.argument_size_in_bytes / GIB, 'temp_gib': m.temp_size_in_bytes / GIB,
            'step_tflops': flops / 1e12}
  if peak_tflops and img_per_sec > 0:
    record.update(img_per_sec=img_per_sec,
                  needed_mfu=flops * img_per_sec / config.batch_size / (n * peak_tflops * 1e12))
  if used > hbm_gib * GIB:
    raise PlanDoesNotFit(record, _suggestions(config, n))
  return record


class PlanDoesNotFit(RuntimeError):
  """The compiled step needs more memory per device than the chip has."""

  def __init__(self, record: dict[str, Any], suggestions: list[str]):
    self.record = record
    super().__init__(
        f'The step needs {record["per_device_gib"]:.2f} GiB per device, more than the '
        f'{record["hbm_gib"]:g} GiB each has. Try: ' + '; '.join(suggestions) + '.')


def _suggestions(config: Any, devices: int) -> list[str]:
  out = []
  if devices % (2 * config.mesh.fsdp) == 0:
    out.append(f'a larger FSDP group (fsdp={2 * config.mesh.fsdp})')
  if config.batch_size % (2 * devices) == 0:
    out.append(f'a smaller per-chip batch (batch={config.batch_size // 2} with twice the '
               'gradient-accumulation steps, eff_batch unchanged)')
  if config.compute_dtype != 'bfloat16':
    out.append('bfloat16 activations (compute_dtype=bfloat16)')
  if config.teacher.dtype != 'bfloat16' and config.teacher.name:
    out.append('a bfloat16 teacher (teacher_dtype=bfloat16)')
  return out or ['a slice with more chips']


def describe(record: dict[str, Any], topology: str) -> str:
  """Human-readable lines for a plan record."""
  lines = [f'{topology}: {record["devices"]} devices, mesh {record["mesh"]}, batch '
           f'{record["batch_size"]} ({record["per_device_batch"]} per device), student '
           f'{record["compute_dtype"]}, teacher {record["teacher_dtype"]}',
           f'  memory per device: {record["per_device_gib"]:.2f} of {record["hbm_gib"]:g} GiB '
           f'(arguments {record["arguments_gib"]:.2f}, temporaries {record["temp_gib"]:.2f})',
           f'  FLOPs per step: {record["step_tflops"]:.2f} TFLOP']
  if 'needed_mfu' in record:
    lines.append(f'  {record["img_per_sec"]:g} img/s needs {100 * record["needed_mfu"]:.1f}% MFU')
  return '\n'.join(lines)


def main(argv: list[str]) -> None:
  """Plans the --config run on --topology; prints the plan and its JSON, or why it does not fit."""
  from absl import app, flags
  from lkd_jax.errors import SetupError
  del argv
  f = flags.FLAGS
  devices, chip = _devices(f.topology)
  hbm = f.hbm_gib or (chip.hbm_gib if chip else 0.0)
  if not hbm:
    raise app.UsageError('--hbm_gib is needed with --topology cpu.')
  try:
    record = plan(f.config, devices, 'cpu' if chip is None else 'tpu', hbm_gib=hbm,
                  peak_tflops=chip.peak_tflops if chip else None, img_per_sec=f.img_per_sec)
  except PlanDoesNotFit as e:
    print(describe(e.record, f.topology), file=sys.stderr)
    raise SystemExit(f'error: {e}') from None
  except (SetupError, ValueError, RuntimeError) as e:
    raise SystemExit(f'error: {e}') from None
  print(describe(record, f.topology))
  print(json.dumps({'topology': f.topology, **record}))


def _devices(topology: str) -> tuple[list[Any], Chip | None]:
  if topology == 'cpu':
    import jax
    return jax.devices('cpu'), None
  name, chip = topology_name(topology)
  return tpu_devices(name), chip


def _define_flags() -> None:
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'Run config, as for lkd_jax.main.',
                                  lock_config=False)
  flags.DEFINE_string('topology', 'v4-8', 'TPU accelerator type (v4-32, v5e-16, v5p-64, v6e-8), '
                      'topology (v5e:4x4) or cpu (this host\'s CPU devices).')
  flags.DEFINE_float('hbm_gib', 0.0, 'Memory per device (default: the chip\'s HBM).')
  flags.DEFINE_float('img_per_sec', 0.0, 'Target training throughput: prints the MFU it needs.')
  flags.mark_flags_as_required(['config'])


if __name__ == '__main__':
  from absl import app
  _define_flags()
  app.run(main)
