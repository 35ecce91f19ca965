"""Device mesh and shardings: one `data` axis over every device, batches split on their first dimension.

We use jax.jit with NamedSharding rather than jax.pmap: pmap is in maintenance mode since JAX 0.8
and is itself built on jit + shard_map; the mesh also scales to multi-host pods unchanged.
"""
from __future__ import annotations

import collections
from typing import Any, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = 'data'
DEVICE_PREFETCH = 2  # batches transferred ahead of the step (prefetch_to_mesh)


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis 'data' over all (global) devices; Auto axis types (DESIGN §4)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices).reshape(-1), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that keeps a full copy on every device."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding that splits the leading (batch) dimension over the 'data' axis."""
  return NamedSharding(mesh, P(DATA))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles this process's slice of the batch into global arrays sharded over 'data'."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def check_batch_size(global_batch_size: int, mesh: Mesh, name: str = 'batch_size') -> None:
  """Raises when the global batch (config key `name`) cannot be split evenly over devices and processes."""
  n = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % n or global_batch_size % jax.process_count():
    raise ValueError(f'{name}={global_batch_size} must be a positive multiple of the {n} devices '
                     f'and {jax.process_count()} processes; set config.{name} to a multiple of {n}.')


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Places a host pytree on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def prefetch_to_mesh(batches: Iterator[dict[str, np.ndarray]], mesh: Mesh,
                     size: int = DEVICE_PREFETCH
                     ) -> Iterator[dict[str, jax.Array]]:
  """Global sharded batches, `size` transfers ahead of the consumer (host-to-device copies overlap the step).

  flax.jax_utils.prefetch_to_device is pmap-style (device_put_sharded, deprecated since JAX 0.8.1).
  """
  queue = collections.deque()
  for batch in batches:
    queue.append(global_batch(batch, mesh))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
