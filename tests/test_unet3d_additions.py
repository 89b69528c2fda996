"""Unet3D options beyond the reference (all off by default, each starting as the reference where it can):
frame embeddings, per-frame FiLM, absolute positions, a text-token MLP into FiLM, pseudo-3D temporal convs,
per-frame noise levels, space-to-depth patches and tubelets."""
import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen_jax.models.unet3d import Unet3D
from tests.unet3d_setup import B, S, T, TEXT_CFG, TINY, flat_params, init_params, random_params, setup_unet


def test_absolute_frame_embedding_is_optional_and_breaks_time_shift_symmetry():
  model, params, inp = setup_unet(dict(TINY, max_frames_embedding=6))
  assert params["frame_emb"].shape == (6, TINY["dim"])
  x = np.repeat(inp["x"][:, :1], T, axis=1)               # the same frame T times
  out = np.asarray(jax.jit(model.apply)({"params": params}, x, inp["time"]))
  assert np.abs(out[:, 0] - out[:, 1]).max() > 1e-3       # frames now differ by their absolute index
  params["frame_emb"] = jnp.zeros_like(params["frame_emb"])
  plain = Unet3D(**TINY)
  no_emb = {k: v for k, v in params.items() if k != "frame_emb"}
  np.testing.assert_allclose(jax.jit(model.apply)({"params": params}, x, inp["time"]),
                             jax.jit(plain.apply)({"params": no_emb}, x, inp["time"]), atol=1e-5)
  with pytest.raises(ValueError, match="max_frames_embedding"):
    Unet3D(**dict(TINY, max_frames_embedding=2)).init(jax.random.key(0), inp["x"], inp["time"])


def test_frame_cond_mlp_starts_as_identity_and_makes_film_depend_on_the_frame():
  cfg = dict(TINY, cond_dim=6, frame_cond_mlp=16)
  model, params, inp = setup_unet(cfg, seed=3)
  assert params["frame_cond_mlp"]["dense_in"]["kernel"].shape == (4 * TINY["dim"] + 6 + 16, 16)
  x = np.repeat(inp["x"][:, :1], T, axis=1)               # the same frame T times
  apply = jax.jit(lambda m, p, c: m.apply({"params": p}, x, inp["time"], c), static_argnums=0)
  out = np.asarray(apply(model, params, inp["cond"]))
  assert np.abs(out[:, 0] - out[:, T - 1]).max() > 1e-3   # each frame gets its own FiLM condition
  plain = Unet3D(**dict(TINY, cond_dim=6))
  rest = {k: v for k, v in params.items() if k != "frame_cond_mlp"}
  same = np.asarray(apply(plain, rest, inp["cond"]))
  np.testing.assert_allclose(same[:, 0], same[:, T - 1], atol=1e-5)  # the reference: frames stay equal
  zero_out = jax.tree.map(jnp.zeros_like, params["frame_cond_mlp"]["dense_out"])
  init_like = dict(params, frame_cond_mlp=dict(params["frame_cond_mlp"], dense_out=zero_out))
  np.testing.assert_allclose(apply(model, init_like, inp["cond"]), same, atol=1e-5)
  fresh = init_params(model, inp["x"], inp["time"], inp["cond"], select=lambda p: p["frame_cond_mlp"]["dense_out"])
  assert not np.any(fresh["kernel"])                       # zero-initialised: starts as the reference
  with pytest.raises(ValueError, match="frame_cond_mlp"):
    Unet3D(dim=8, dim_mults=(1,), frame_cond_mlp=8)


def test_position_features_start_as_identity_and_feed_absolute_positions():
  from vidgen_jax.layers import embeddings
  grid = np.asarray(embeddings.fourier_grid_embedding(4, 6, 2))
  assert grid.shape == (4, 6, 8)
  np.testing.assert_allclose(grid[:, :, :4], grid[:, :1, :4].repeat(6, 1))    # row features: same along a row
  np.testing.assert_allclose(grid[1, 2, 4:], [np.sin(np.pi * -1 / 6), np.sin(2 * np.pi * -1 / 6),
                                              np.cos(np.pi * -1 / 6), np.cos(2 * np.pi * -1 / 6)], atol=1e-6)
  model, params, inp = setup_unet(dict(TINY, position_features=3), seed=4)
  assert params["position_proj"]["kernel"].shape == (12, TINY["dim"])
  x = np.zeros_like(inp["x"])                                          # no input signal: only positions
  apply = jax.jit(lambda m, p, x: m.apply({"params": p}, x, inp["time"]), static_argnums=0)
  plain = Unet3D(**TINY)
  rest = {k: v for k, v in params.items() if k != "position_proj"}
  assert np.abs(np.asarray(apply(model, params, x)) - np.asarray(apply(plain, rest, x))).max() > 1e-3
  zero = dict(params, position_proj={"kernel": jnp.zeros_like(params["position_proj"]["kernel"])})
  np.testing.assert_allclose(apply(model, zero, inp["x"]), apply(plain, rest, inp["x"]), atol=1e-5)
  fresh = init_params(model, inp["x"], inp["time"], select=lambda p: p["position_proj"])
  assert not np.any(fresh["kernel"])                                   # zero-initialised: starts as reference
  wide = np.zeros((B, T, S, 2 * S, 3), np.float32)                     # any grid size works
  assert apply(model, params, wide).shape == wide.shape


def test_text_cond_mlp_pools_real_tokens_into_film_and_respects_null_cond():
  cfg = dict(TEXT_CFG, cross_attention=False, text_cond_mlp=16)
  model, params, inp = setup_unet(cfg, seed=2)
  assert "text_cond_mlp" in params and not any(k.endswith("cross_attn") for k in params)
  mask = np.array([[True, True, False], [True, True, True]])
  apply = jax.jit(lambda p, tokens, null: model.apply({"params": p}, inp["x"], inp["time"], inp["cond"],
                                                      null_cond=null, text_tokens=tokens, text_mask=mask))
  null = np.array([True, False])
  base = np.asarray(apply(params, inp["tokens"], null))
  padded = inp["tokens"].copy()
  padded[0, 2] = padded[1, 0] = 40.0   # a padding token of sample 0 and a real token of sample 1
  out = np.asarray(apply(params, padded, null))
  np.testing.assert_allclose(out[0], base[0], atol=1e-5)   # null condition: tokens ignored
  assert np.abs(out[1] - base[1]).max() > 1e-3             # real token changed: the output follows
  with pytest.raises(ValueError, match="text_cond_mlp"):
    Unet3D(dim=8, dim_mults=(1,), text_cond_mlp=8)


def test_temporal_conv_resnets_start_as_the_reference_and_learn_from_there():
  model, params, inp = setup_unet(dict(TINY, temporal_conv=3))
  real = flat_params(nn.unbox(jax.eval_shape(model.init, jax.random.key(0), inp["x"], inp["time"])["params"]))
  names = [k for k in real if "temporal_conv" in k]
  assert names and not any(k.startswith("final_block") for k in names)
  assert real["downs_0_resnet1/temporal_conv/kernel"].shape == (3, 8, 8)
  init = init_params(model, inp["x"], inp["time"],
                     select=lambda p: {k: v for k, v in flat_params(p).items() if "temporal_conv" in k})
  assert sorted(init) == sorted(names) and all(np.all(np.asarray(v) == 0) for v in init.values())
  params = {k: jnp.zeros_like(v) if "temporal_conv" in k else v for k, v in flat_params(params).items()}
  rest = {k: v for k, v in params.items() if "temporal_conv" not in k}
  unflat = lambda flat: traverse_util.unflatten_dict(flat, sep="/")
  np.testing.assert_allclose(jax.jit(model.apply)({"params": unflat(params)}, inp["x"], inp["time"]),
                             jax.jit(Unet3D(**TINY).apply)({"params": unflat(rest)}, inp["x"], inp["time"]),
                             atol=1e-5)
  grads = flat_params(jax.jit(jax.grad(lambda p: (model.apply({"params": p}, inp["x"], inp["time"]) ** 2).sum()))(
      unflat(params)))
  assert all(np.abs(np.asarray(grads[k])).max() > 0 for k in names)


def test_per_frame_time_matches_shared_time_and_conditions_each_frame():
  """time (B, T): equal per-frame times give the (B,) output; a frame's own time changes that frame."""
  model, params, inp = setup_unet(dict(TINY, cond_dim=6), seed=4)
  apply = jax.jit(lambda t: model.apply({"params": params}, inp["x"], t, inp["cond"]))
  shared = np.asarray(apply(inp["time"]))
  tiled = np.repeat(inp["time"][:, None], T, axis=1)
  np.testing.assert_allclose(apply(tiled), shared, atol=1e-5)
  mixed = tiled.copy()
  mixed[:, 1] = 500
  out = np.asarray(apply(mixed))
  assert np.abs(out[:, 1] - shared[:, 1]).max() > 1e-3
  with pytest.raises(ValueError, match="per-frame time"):
    model.apply({"params": params}, inp["x"], tiled[:, :T - 1], inp["cond"])


def test_input_skip_starts_as_the_reference_and_adds_a_time_gated_map_of_the_input():
  model, params, inp = setup_unet(dict(TINY, input_skip=True), seed=5)      # random parameters
  fresh = init_params(model, inp["x"], inp["time"],
                      select=lambda p: {k: p[k] for k in ("input_skip", "input_skip_gain")})
  assert fresh["input_skip"]["kernel"].shape == (3, 3) and fresh["input_skip_gain"]["kernel"].shape == (32, 3)
  assert not any(np.any(v) for v in jax.tree.leaves([fresh["input_skip"], fresh["input_skip_gain"]]))
  params = dict(params, input_skip=fresh["input_skip"], input_skip_gain=fresh["input_skip_gain"])
  rest = {k: v for k, v in params.items() if not k.startswith("input_skip")}
  apply = jax.jit(lambda m, p, t: m.apply({"params": p}, inp["x"], t), static_argnums=0)
  plain = np.asarray(apply(Unet3D(**TINY), rest, inp["time"]))
  np.testing.assert_allclose(apply(model, params, inp["time"]), plain, atol=1e-6)   # W = 0 at init
  eye = dict(params, input_skip=dict(params["input_skip"], kernel=jnp.eye(3)))
  np.testing.assert_allclose(apply(model, eye, inp["time"]) - plain, inp["x"], atol=1e-5)  # g = 1 at init
  # A gain that depends on t: each frame of a per-frame time gets its own.
  gain = params["input_skip_gain"]
  timed = dict(eye, input_skip_gain=dict(gain, kernel=jax.random.normal(jax.random.key(1), gain["kernel"].shape)))
  tiled = np.repeat(inp["time"][:, None], T, axis=1)
  np.testing.assert_allclose(apply(model, timed, tiled), apply(model, timed, inp["time"]), atol=1e-5)
  mixed = tiled.copy()
  mixed[:, 1] = 500
  moved = np.abs(np.asarray(apply(model, timed, mixed)) - np.asarray(apply(model, timed, tiled))).max(axis=(0, 2, 3, 4))
  assert moved[1] > 1e-3 and moved[1] == moved.max()


def test_patching_round_trips_and_tubelets_fold_frames():
  from vidgen_jax.models import patched
  x = np.arange(2 * 4 * 8 * 8 * 3, dtype=np.float32).reshape(2, 4, 8, 8, 3)
  for p, pt in ((2, 1), (4, 2), (1, 4)):
    tokens = patched.to_patches(x, p, pt)
    assert tokens.shape == (2, 4 // pt, 8 // p, 8 // p, 3 * p * p * pt)
    np.testing.assert_array_equal(patched.from_patches(tokens, p, pt), x)
  tokens = np.asarray(patched.to_patches(x, 2, 2))
  np.testing.assert_array_equal(tokens[0, 1, 0, 0, :12], x[0, 2, :2, :2].reshape(-1))   # frame 2 of tubelet 1
  np.testing.assert_array_equal(tokens[0, 1, 0, 0, 12:], x[0, 3, :2, :2].reshape(-1))   # then frame 3
  model = patched.Patched(Unet3D(dim=8, dim_mults=(1, 2), attn_heads=2, channels=3 * 2 * 2 * 2), 2, 2)
  params = random_params(model, x, np.array([3, 977]))
  out = model.apply({"params": params}, x, np.array([3, 977]))
  assert out.shape == x.shape
  with pytest.raises(ValueError, match="divisible by temporal_patch_size"):
    model.apply({"params": params}, x[:, :3], np.array([3, 977]))
  with pytest.raises(ValueError, match="per-frame timesteps"):
    model.apply({"params": params}, x, np.full((2, 4), 3))


def test_tubelets_refuse_frame_wise_features_at_start_up():
  from vidgen_jax import configs
  from vidgen_jax.train import validation
  c = configs.load_config_file("configs/vdm_shapes.py:runlocal=True")
  c.model.temporal_patch_size = 2
  assert validation.vdm_problems(c, num_devices=1) == []
  c.diffusion.frame_noise_prob, c.train.joint_images = 0.5, 2
  problems = validation.vdm_problems(c, num_devices=1)
  assert len(problems) == 2 and all("temporal_patch_size=2 folds frames" in q for q in problems), problems
