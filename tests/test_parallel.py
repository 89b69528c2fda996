import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from vidgen_jax.parallel import mesh as mesh_lib
from vidgen_jax.parallel import sharding


def test_resolve_mesh_shape():
  assert mesh_lib.resolve_mesh_shape({"data": -1}, 8) == (8, 1, 1)
  assert mesh_lib.resolve_mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="multiply"):
    mesh_lib.resolve_mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="unknown axes"):
    mesh_lib.resolve_mesh_shape({"model": 2}, 8)


def test_make_mesh_uses_all_devices():
  m = mesh_lib.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
  assert dict(m.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  assert m.devices.size == jax.device_count() == 8


def test_fit_spec_replicates_indivisible_dims():
  m = mesh_lib.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
  assert sharding.fit_spec((3, 64), P("fsdp", None), m) == P(None, None)
  assert sharding.fit_spec((16, 64), P("fsdp", None), m) == P("fsdp", None)


def test_presets_and_overrides():
  rules = sharding.get_rules("fsdp_tensor", extra=(("heads", None),))
  assert dict(rules)["heads"] is None and dict(rules)["embed"] == "fsdp"
  with pytest.raises(ValueError, match="preset"):
    sharding.get_rules("zero9")


class _Toy(nn.Module):
  @nn.compact
  def __call__(self, x):
    k = self.param("k", nn.with_logical_partitioning(nn.initializers.normal(), ("embed", "mlp")), (16, 32))
    return x @ k


def test_params_created_sharded():
  m = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sharding.get_rules("fsdp_tensor")
  params, shardings = sharding.shard_params_init(lambda k: _Toy().init(k, jnp.ones((1, 16))), m, rules,
                                                 jax.random.key(0))
  k = params["params"]["k"]
  assert k.sharding.spec == P("fsdp", "tensor")
  assert {s.data.shape for s in k.addressable_shards} == {(8, 16)}
