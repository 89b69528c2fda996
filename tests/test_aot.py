"""Ahead-of-time plans (vidgen_jax/parallel/aot.py): the real train step compiled for 8 fake CPU devices per
preset, per-chip state bytes from the shardings, remat's effect, and (with libtpu only) a v5p:2x2x2 compile."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tests.helpers import micro_config
from vidgen_jax.parallel import aot

TEXT_DIM = 16   # stand-in text width (no text encoder is loaded)


@pytest.fixture(scope="module")
def cpu8():
  target = aot.parse_target("cpu:8")
  return target, aot.target_devices(target)


@pytest.fixture(scope="module")
def records(cpu8):
  """One compile per preset, shared by the tests below (XLA:CPU compiles dominate this file's time)."""
  target, devices = cpu8
  config = micro_config()
  return {p: aot.plan(config, target, devices, p, remat=False, text_width=TEXT_DIM) for p in aot.PRESETS}


def test_parse_target():
  t = aot.parse_target("v5p:2x2x2")
  assert (t.platform, t.chip.name, t.num_chips) == ("tpu", "v5p", 8)
  assert aot.parse_target("v5e:4x4").num_chips == 16
  assert aot.parse_target("cpu:8").num_cpu == 8
  for bad in ("v5p", "v5p-16", "v7:2x2", "tpu:2x2"):
    with pytest.raises(ValueError, match="topology"):
      aot.parse_target(bad)


def test_every_preset_compiles_with_per_chip_figures(records):
  for preset in aot.PRESETS:
    r = records[preset]
    assert r["chips"] == 8 and r["preset"] == preset
    assert r["num_params"] > 10_000
    assert r["argument_bytes"] > 0 and r["temp_bytes"] > 0 and r["total_bytes"] >= r["temp_bytes"]
    assert r["flops_per_chip"] > 0
    assert r["fits"] is None and r["step_time_s"] is None  # a CPU has no peak/HBM entry
  assert records["data"]["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
  assert records["fsdp_tensor"]["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}


def test_fsdp_shards_params_and_optimizer_state_8_ways(records):
  data, fsdp = records["data"], records["fsdp"]
  # Replicated: every chip holds params + EMA + Adam moments (4x the params, plus two step counters).
  assert data["state_bytes_per_chip"] == data["state_bytes_replicated"]
  assert data["opt_bytes_per_chip"] >= 2 * data["params_bytes_per_chip"]
  # fsdp=8: ~1/8 of that. The micro U-Net's small leaves stay replicated (norm gains, biases whose only axis
  # is not sharded, the 7x7 RGB-input conv whose 3 input channels fsdp=8 cannot split: 8% of its params);
  # measured 0.193 of replicated, 1/8 = 0.125. U-Net L below is the real check.
  ratio = fsdp["state_bytes_per_chip"] / data["state_bytes_replicated"]
  assert 1 / 8 <= ratio < 0.2, ratio
  # XLA's argument buffers on one chip agree with the bytes computed from the shardings (+ the batch).
  assert fsdp["state_bytes_per_chip"] <= fsdp["argument_bytes"] < fsdp["state_bytes_per_chip"] * 1.05 + 20_000


def test_unet_l_state_per_chip_is_one_eighth_under_fsdp_8(cpu8):
  """The ~0.9B-parameter variant L, from the shardings alone (no compile): params + EMA + Adam per chip."""
  from vidgen_jax import configs
  from vidgen_jax.train import setup as setup_lib
  config = configs.load_config_file("configs/vdm_shapes.py:variant=L")
  out = {}
  for preset in ("data", "fsdp", "fsdp_tensor"):
    c = aot.preset_config(config, preset, 8)
    run = setup_lib.build_run(c, text_encoder=aot.ShapeOnlyTextEncoder(384, c.text.max_length), devices=cpu8[1])
    out[preset] = aot.state_bytes(run.abstract_state)
  replicated = out["data"]["state_bytes_replicated"]
  assert out["data"]["state_bytes_per_chip"] == replicated > 14e9   # 4 x 0.89B float32 numbers
  for preset in ("fsdp", "fsdp_tensor"):   # measured 0.12523 and 0.12514 (0.03% of params replicated)
    assert out[preset]["state_bytes_per_chip"] / replicated == pytest.approx(1 / 8, rel=0.005)


def _matmul_flops(devices):
  """cost_analysis() FLOPs of a (1024 x 1024) @ (1024 x 1024) matmul with rows split over `devices`."""
  mesh = Mesh(np.asarray(devices), ("d",))
  x = jax.ShapeDtypeStruct((1024, 1024), jnp.float32, sharding=NamedSharding(mesh, P("d")))
  w = jax.ShapeDtypeStruct((1024, 1024), jnp.float32, sharding=NamedSharding(mesh, P()))
  cost = jax.jit(lambda x, w: x @ w).lower(x, w).compile().cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_cost_analysis_flops_are_per_chip(cpu8):
  # With SPMD partitioning the compiled program is one device's share: 2 * 1024^3 / 8 flops, not the total.
  assert _matmul_flops(cpu8[1]) == pytest.approx(2 * 1024 ** 3 / 8, rel=0.01)


def test_remat_puts_the_recomputation_in_the_step(cpu8):
  """model.remat changes the compiled program: each block's forward runs again in the backward pass.

  Measured on this micro U-Net (fsdp=8, compiled): +28% FLOPs per chip, temporaries +1.2% (its saved
  activations are a few KB, less than the recomputation's own buffers). At U-Net L size on v5p remat is what
  makes large per-chip batches fit (aot.py docstring). Here the lowered program is enough to see it.
  """
  from vidgen_jax.train import setup as setup_lib
  flops, state = {}, {}
  for remat in (False, True):
    c = aot.preset_config(micro_config(), "fsdp", 8, remat=remat)
    run = setup_lib.build_run(c, text_encoder=aot.ShapeOnlyTextEncoder(TEXT_DIM, c.text.max_length),
                              devices=cpu8[1])
    cost = aot.lower_train_step(run).cost_analysis()
    flops[remat] = (cost[0] if isinstance(cost, list) else cost)["flops"]
    state[remat] = aot.state_bytes(run.abstract_state)
  assert flops[True] > 1.2 * flops[False]   # measured +30% (the unpartitioned program's count)
  assert state[True] == state[False]


def test_batch_not_divisible_by_data_axis_is_a_clear_error(cpu8):
  target, devices = cpu8
  config = micro_config(batch_size=12)
  with pytest.raises(ValueError, match="divisible by mesh data"):
    aot.plan(config, target, devices, "data", text_width=TEXT_DIM)


def test_oom_message_gives_figures():
  rec = aot._oom_record("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
                        "space hbm. Used 120.50G of 95.74G hbm. Exceeded hbm capacity by 24.76G.")
  assert rec["fits"] is False and rec["total_bytes"] == int(120.5 * 2 ** 30)
  rec = aot._oom_record("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                        "temporaries (285.79G) exceeds available HBM (95.74G).")
  assert rec["temp_bytes"] == int(285.79 * 2 ** 30) and rec["hbm_bytes_compiler"] == int(95.74 * 2 ** 30)
  assert aot._oom_record("INTERNAL: something else") is None


def test_v5p_topology_compiles_without_a_tpu():
  pytest.importorskip("libtpu", reason="needs the libtpu wheel: pip install -e .[tpu-aot]")
  target = aot.parse_target("v5p:2x2x2")
  devices = aot.target_devices(target)
  assert len(devices) == 8 and devices[0].platform == "tpu"
  assert _matmul_flops(devices) == pytest.approx(2 * 1024 ** 3 / 8, rel=0.01)   # per chip on TPU too
  # fsdp, not fsdp_tensor: libtpu (0.0.42.1 to 0.0.52) aborts in its SPMD partitioner ("Check failed: ...
  # 'dynamic-slice' ... cannot be downcasted") on this micro U-Net's 8-channel convs split 4 x 2 (a (3,3,2,4)
  # kernel shard); from 16 channels up, and for U-Net L, fsdp_tensor compiles.
  r = aot.plan(micro_config(), target, devices, "fsdp", remat=False, text_width=TEXT_DIM)
  assert r["fits"] is True and r["total_bytes"] < r["hbm_bytes"]
  assert r["flops_per_chip"] > 0 and 0 < r["step_time_s"] < 1
  assert r["step_time_s"] == pytest.approx(r["flops_per_chip"] / (459e12 * 0.4))


def test_cli_compile_errors_are_clear(capsys, monkeypatch):
  from vidgen_jax import cli
  cfg = "configs/vdm_shapes.py:runlocal=True"
  assert cli.main(["compile", "--config", cfg, "--topology", "v5p-16"]) == 2
  assert "GENERATION:SHAPE" in capsys.readouterr().err
  monkeypatch.setattr(aot, "have_libtpu", lambda: False)
  assert cli.main(["compile", "--config", cfg, "--topology", "v5p:2x2x2"]) == 2
  assert "pip install -e .[tpu-aot]" in capsys.readouterr().err
  # runlocal's batch of 8 cannot split over 16 chips; every preset's problem is listed before compiling.
  assert cli.main(["compile", "--config", cfg, "--topology", "cpu:16", "--preset", "data,fsdp"]) == 2
  err = capsys.readouterr().err
  assert "preset data: train.batch_size/grad_accum=8 must be divisible by mesh data*fsdp=16" in err
  assert "preset fsdp:" in err
  assert cli.main(["compile", "--config", cfg, "--topology", "cpu:8", "--preset", "zero"]) == 2
  assert "--preset" in capsys.readouterr().err
