"""Logical-axis sharding: parameter and activation axis names mapped to mesh axes by rules from the config.

Modules annotate parameters with `nn.with_logical_partitioning` and activations with
`nn.with_logical_constraint`, in one vocabulary (batch, frames, height, embed, heads, mlp, conv_in, ...).
A preset here maps that vocabulary onto the mesh axes ('data', 'fsdp', 'tensor'); a config may also give its
own rules. Unlisted logical names are replicated.
"""
from collections.abc import Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Batch is split over every data-parallel axis; activations are otherwise replicated unless a tensor-parallel
# axis claims their channels.
_BATCH = ("batch", ("data", "fsdp"))

SHARDING_PRESETS: dict[str, tuple] = {
    # Parameters replicated, batch over data and fsdp: plain data parallelism.
    "data": (_BATCH,),
    # ZeRO-3 style: every weight's input-feature dimension sharded over fsdp; gathered per layer by XLA.
    "fsdp": (
        _BATCH,
        ("embed", "fsdp"),
        ("conv_in", "fsdp"),
        ("cond", "fsdp"),
        ("vocab", "fsdp"),
    ),
    # fsdp plus Megatron-style tensor parallelism over heads, MLP hidden and conv output channels.
    "fsdp_tensor": (
        _BATCH,
        ("embed", "fsdp"),
        ("conv_in", "fsdp"),
        ("cond", "fsdp"),
        ("vocab", "fsdp"),
        ("heads", "tensor"),
        ("mlp", "tensor"),
        ("conv_out", "tensor"),
    ),
}


def get_rules(preset: str, extra: Sequence[Sequence] = ()) -> tuple:
  """Returns logical->mesh rules: the preset's, with `extra` (logical, mesh) pairs taking precedence."""
  if preset not in SHARDING_PRESETS:
    raise ValueError(f"sharding preset {preset!r} unknown; choose one of {sorted(SHARDING_PRESETS)}")
  extra = tuple((str(k), _as_mesh_axes(v)) for k, v in extra)
  overridden = {k for k, _ in extra}
  return extra + tuple(r for r in SHARDING_PRESETS[preset] if r[0] not in overridden)


def _as_mesh_axes(v):
  if v is None or isinstance(v, str):
    return v
  return tuple(v)


def fit_spec(shape: Sequence[int], spec: P, mesh: Mesh) -> P:
  """Drops the mesh axes of any dimension they do not divide (e.g. 3 RGB input channels over fsdp=8).

  Such a dimension is replicated instead; everything else keeps its sharding.
  """
  entries = list(spec) + [None] * (len(shape) - len(spec))
  fitted = []
  for size, axes in zip(shape, entries):
    names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    ways = 1
    for a in names:
      ways *= mesh.shape[a]
    fitted.append(axes if size % ways == 0 else None)
  return P(*fitted)


def unbox_abstract(tree):
  """A boxed variable tree's values, without the sharding constraint that `nn.meta.unbox` adds to every
  `Partitioned` box whenever a mesh is set (`jax.set_mesh`, as the train loop is in): on an abstract tree
  (shapes from `jax.eval_shape`, no sharding) that constraint fails, and host-side set-up wants none."""
  def one(x):
    if isinstance(x, nn.Partitioned):
      return x.unbox(apply_constraint=False)
    return x.unbox() if isinstance(x, nn.meta.AxisMetadata) else x
  return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def logical_to_sharding(abstract_tree, mesh: Mesh, rules) -> object:
  """NamedShardings for a (boxed) abstract variable tree: logical names -> mesh axes, fitted to each shape."""
  logical = nn.get_partition_spec(abstract_tree)
  unboxed = unbox_abstract(abstract_tree)

  def one(spec, leaf):
    if not hasattr(leaf, "shape"):   # an empty node (e.g. optax's MaskedNode of a multi_transform): no arrays
      return leaf
    mesh_spec = nn.logical_to_mesh_axes(tuple(spec), rules) if spec is not None else P()
    return NamedSharding(mesh, fit_spec(leaf.shape, mesh_spec, mesh))

  return jax.tree.map(one, logical, unboxed, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, ndim: int, rules) -> NamedSharding:
  """Sharding of a batch array: leading axis is the logical 'batch', the rest replicated."""
  spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_params_init(init_fn, mesh: Mesh, rules, *args):
  """Runs `init_fn(*args)` under jit so every parameter is created already sharded (never whole on one host).

  `init_fn` returns a (possibly LogicallyPartitioned-boxed) variable tree. Returns (unboxed tree, shardings).
  """
  abstract = jax.eval_shape(init_fn, *args)
  shardings = logical_to_sharding(abstract, mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    tree = jax.jit(lambda *a: nn.meta.unbox(init_fn(*a)), out_shardings=shardings)(*args)
  return tree, shardings
