"""Device mesh from the config: axes ('data', 'fsdp', 'tensor').

`config.mesh` holds one degree per axis; exactly one may be -1 ("all remaining devices"). The same config runs
on a laptop CPU (1 device), a fake 8-device CPU mesh in tests, a GPU node or a TPU pod: only the degrees change.
On several hosts, `data` is the axis that should span hosts (slow links carry one gradient all-reduce).
"""
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(degrees: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Returns the degree of each axis in MESH_AXES order, filling one -1 with the remaining devices."""
  unknown = set(degrees) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"mesh: unknown axes {sorted(unknown)}; the axes are {MESH_AXES}")
  shape = [int(degrees.get(a, 1)) for a in MESH_AXES]
  free = [i for i, d in enumerate(shape) if d == -1]
  if len(free) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, shape))}")
  if any(d == 0 or d < -1 for d in shape):
    raise ValueError(f"mesh: degrees must be positive or -1, got {dict(zip(MESH_AXES, shape))}")
  known = int(np.prod([d for d in shape if d != -1]))
  if free:
    if num_devices % known:
      raise ValueError(f"mesh: {num_devices} devices are not divisible by the fixed degrees "
                       f"{dict(zip(MESH_AXES, shape))}")
    shape[free[0]] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"mesh: degrees {dict(zip(MESH_AXES, shape))} multiply to {int(np.prod(shape))}, "
                     f"but there are {num_devices} devices")
  return tuple(shape)


def make_mesh(degrees: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a Mesh over `devices` (default: all) with axes MESH_AXES.

  Uses jax.make_mesh (topology-aware device order on TPU) with Auto axis types, so that sharding is decided by
  jit in/out shardings and logical constraints rather than sharding-in-types.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(degrees, len(devices))
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  try:
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  except (ValueError, NotImplementedError):
    # make_mesh insists on physical topologies for some device sets (e.g. a subset of TPU chips).
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)
