"""Unet3D: torch parameter layout, numpy transcription of the torch forward, conditioning, remat, bf16, the
temporal block's custom VJP. Options beyond the reference: test_unet3d_additions.py."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen_jax.layers import attention, norms
from vidgen_jax.models import unet3d
from vidgen_jax.models import unet3d_blocks as blocks
from vidgen_jax.models.unet3d import Unet3D
from tests.unet3d_setup import B, L, T, TEXT_CFG, TINY, abstract_params, flat_params, setup_unet, unet_inputs

# state_dict of video_diffusion_pytorch 0.7.0 Unet3D(dim=32, dim_mults=(1, 2), attn_heads=2, attn_dim_head=16)
# (research/torch_state_dicts.md). model.parameters() counts the 6 tied rotary `freqs` entries once: 728715.
TORCH_LISTING = """
time_rel_pos_bias.relative_attention_bias.weight  (32, 2)
init_conv.weight  (32, 3, 1, 7, 7)
init_conv.bias  (32,)
init_temporal_attn.fn.fn.fn.rotary_emb.freqs  (8,)
init_temporal_attn.fn.fn.fn.to_qkv.weight  (96, 32)
init_temporal_attn.fn.fn.fn.to_out.weight  (32, 32)
init_temporal_attn.fn.norm.gamma  (1, 32, 1, 1, 1)
time_mlp.1.weight  (128, 32)
time_mlp.1.bias  (128,)
time_mlp.3.weight  (128, 128)
time_mlp.3.bias  (128,)
downs.0.0.mlp.1.weight  (64, 128)
downs.0.0.mlp.1.bias  (64,)
downs.0.0.block1.proj.weight  (32, 32, 1, 3, 3)
downs.0.0.block1.proj.bias  (32,)
downs.0.0.block1.norm.gamma  (32, 1, 1, 1)
downs.0.0.block2.proj.weight  (32, 32, 1, 3, 3)
downs.0.0.block2.proj.bias  (32,)
downs.0.0.block2.norm.gamma  (32, 1, 1, 1)
downs.0.1.mlp.1.weight  (64, 128)
downs.0.1.mlp.1.bias  (64,)
downs.0.1.block1.proj.weight  (32, 32, 1, 3, 3)
downs.0.1.block1.proj.bias  (32,)
downs.0.1.block1.norm.gamma  (32, 1, 1, 1)
downs.0.1.block2.proj.weight  (32, 32, 1, 3, 3)
downs.0.1.block2.proj.bias  (32,)
downs.0.1.block2.norm.gamma  (32, 1, 1, 1)
downs.0.2.fn.fn.to_qkv.weight  (192, 32, 1, 1)
downs.0.2.fn.fn.to_out.weight  (32, 64, 1, 1)
downs.0.2.fn.fn.to_out.bias  (32,)
downs.0.2.fn.norm.gamma  (1, 32, 1, 1, 1)
downs.0.3.fn.fn.fn.rotary_emb.freqs  (8,)
downs.0.3.fn.fn.fn.to_qkv.weight  (96, 32)
downs.0.3.fn.fn.fn.to_out.weight  (32, 32)
downs.0.3.fn.norm.gamma  (1, 32, 1, 1, 1)
downs.0.4.weight  (32, 32, 1, 4, 4)
downs.0.4.bias  (32,)
downs.1.0.mlp.1.weight  (128, 128)
downs.1.0.mlp.1.bias  (128,)
downs.1.0.block1.proj.weight  (64, 32, 1, 3, 3)
downs.1.0.block1.proj.bias  (64,)
downs.1.0.block1.norm.gamma  (64, 1, 1, 1)
downs.1.0.block2.proj.weight  (64, 64, 1, 3, 3)
downs.1.0.block2.proj.bias  (64,)
downs.1.0.block2.norm.gamma  (64, 1, 1, 1)
downs.1.0.res_conv.weight  (64, 32, 1, 1, 1)
downs.1.0.res_conv.bias  (64,)
downs.1.1.mlp.1.weight  (128, 128)
downs.1.1.mlp.1.bias  (128,)
downs.1.1.block1.proj.weight  (64, 64, 1, 3, 3)
downs.1.1.block1.proj.bias  (64,)
downs.1.1.block1.norm.gamma  (64, 1, 1, 1)
downs.1.1.block2.proj.weight  (64, 64, 1, 3, 3)
downs.1.1.block2.proj.bias  (64,)
downs.1.1.block2.norm.gamma  (64, 1, 1, 1)
downs.1.2.fn.fn.to_qkv.weight  (192, 64, 1, 1)
downs.1.2.fn.fn.to_out.weight  (64, 64, 1, 1)
downs.1.2.fn.fn.to_out.bias  (64,)
downs.1.2.fn.norm.gamma  (1, 64, 1, 1, 1)
downs.1.3.fn.fn.fn.rotary_emb.freqs  (8,)
downs.1.3.fn.fn.fn.to_qkv.weight  (96, 64)
downs.1.3.fn.fn.fn.to_out.weight  (64, 32)
downs.1.3.fn.norm.gamma  (1, 64, 1, 1, 1)
ups.0.0.mlp.1.weight  (64, 128)
ups.0.0.mlp.1.bias  (64,)
ups.0.0.block1.proj.weight  (32, 128, 1, 3, 3)
ups.0.0.block1.proj.bias  (32,)
ups.0.0.block1.norm.gamma  (32, 1, 1, 1)
ups.0.0.block2.proj.weight  (32, 32, 1, 3, 3)
ups.0.0.block2.proj.bias  (32,)
ups.0.0.block2.norm.gamma  (32, 1, 1, 1)
ups.0.0.res_conv.weight  (32, 128, 1, 1, 1)
ups.0.0.res_conv.bias  (32,)
ups.0.1.mlp.1.weight  (64, 128)
ups.0.1.mlp.1.bias  (64,)
ups.0.1.block1.proj.weight  (32, 32, 1, 3, 3)
ups.0.1.block1.proj.bias  (32,)
ups.0.1.block1.norm.gamma  (32, 1, 1, 1)
ups.0.1.block2.proj.weight  (32, 32, 1, 3, 3)
ups.0.1.block2.proj.bias  (32,)
ups.0.1.block2.norm.gamma  (32, 1, 1, 1)
ups.0.2.fn.fn.to_qkv.weight  (192, 32, 1, 1)
ups.0.2.fn.fn.to_out.weight  (32, 64, 1, 1)
ups.0.2.fn.fn.to_out.bias  (32,)
ups.0.2.fn.norm.gamma  (1, 32, 1, 1, 1)
ups.0.3.fn.fn.fn.rotary_emb.freqs  (8,)
ups.0.3.fn.fn.fn.to_qkv.weight  (96, 32)
ups.0.3.fn.fn.fn.to_out.weight  (32, 32)
ups.0.3.fn.norm.gamma  (1, 32, 1, 1, 1)
ups.0.4.weight  (32, 32, 1, 4, 4)
ups.0.4.bias  (32,)
ups.1.0.mlp.1.weight  (64, 128)
ups.1.0.mlp.1.bias  (64,)
ups.1.0.block1.proj.weight  (32, 64, 1, 3, 3)
ups.1.0.block1.proj.bias  (32,)
ups.1.0.block1.norm.gamma  (32, 1, 1, 1)
ups.1.0.block2.proj.weight  (32, 32, 1, 3, 3)
ups.1.0.block2.proj.bias  (32,)
ups.1.0.block2.norm.gamma  (32, 1, 1, 1)
ups.1.0.res_conv.weight  (32, 64, 1, 1, 1)
ups.1.0.res_conv.bias  (32,)
ups.1.1.mlp.1.weight  (64, 128)
ups.1.1.mlp.1.bias  (64,)
ups.1.1.block1.proj.weight  (32, 32, 1, 3, 3)
ups.1.1.block1.proj.bias  (32,)
ups.1.1.block1.norm.gamma  (32, 1, 1, 1)
ups.1.1.block2.proj.weight  (32, 32, 1, 3, 3)
ups.1.1.block2.proj.bias  (32,)
ups.1.1.block2.norm.gamma  (32, 1, 1, 1)
ups.1.2.fn.fn.to_qkv.weight  (192, 32, 1, 1)
ups.1.2.fn.fn.to_out.weight  (32, 64, 1, 1)
ups.1.2.fn.fn.to_out.bias  (32,)
ups.1.2.fn.norm.gamma  (1, 32, 1, 1, 1)
ups.1.3.fn.fn.fn.rotary_emb.freqs  (8,)
ups.1.3.fn.fn.fn.to_qkv.weight  (96, 32)
ups.1.3.fn.fn.fn.to_out.weight  (32, 32)
ups.1.3.fn.norm.gamma  (1, 32, 1, 1, 1)
mid_block1.mlp.1.weight  (128, 128)
mid_block1.mlp.1.bias  (128,)
mid_block1.block1.proj.weight  (64, 64, 1, 3, 3)
mid_block1.block1.proj.bias  (64,)
mid_block1.block1.norm.gamma  (64, 1, 1, 1)
mid_block1.block2.proj.weight  (64, 64, 1, 3, 3)
mid_block1.block2.proj.bias  (64,)
mid_block1.block2.norm.gamma  (64, 1, 1, 1)
mid_spatial_attn.fn.fn.fn.to_qkv.weight  (192, 64)
mid_spatial_attn.fn.fn.fn.to_out.weight  (64, 64)
mid_spatial_attn.fn.norm.gamma  (1, 64, 1, 1, 1)
mid_temporal_attn.fn.fn.fn.rotary_emb.freqs  (8,)
mid_temporal_attn.fn.fn.fn.to_qkv.weight  (96, 64)
mid_temporal_attn.fn.fn.fn.to_out.weight  (64, 32)
mid_temporal_attn.fn.norm.gamma  (1, 64, 1, 1, 1)
mid_block2.mlp.1.weight  (128, 128)
mid_block2.mlp.1.bias  (128,)
mid_block2.block1.proj.weight  (64, 64, 1, 3, 3)
mid_block2.block1.proj.bias  (64,)
mid_block2.block1.norm.gamma  (64, 1, 1, 1)
mid_block2.block2.proj.weight  (64, 64, 1, 3, 3)
mid_block2.block2.proj.bias  (64,)
mid_block2.block2.norm.gamma  (64, 1, 1, 1)
final_conv.0.block1.proj.weight  (32, 64, 1, 3, 3)
final_conv.0.block1.proj.bias  (32,)
final_conv.0.block1.norm.gamma  (32, 1, 1, 1)
final_conv.0.block2.proj.weight  (32, 32, 1, 3, 3)
final_conv.0.block2.proj.bias  (32,)
final_conv.0.block2.norm.gamma  (32, 1, 1, 1)
final_conv.0.res_conv.weight  (32, 64, 1, 1, 1)
final_conv.0.res_conv.bias  (32,)
final_conv.1.weight  (3, 32, 1, 1, 1)
final_conv.1.bias  (3,)
"""
TORCH_NUM_PARAMETERS = 728715
ROTARY_FREQS_NUMEL = 8  # one shared RotaryEmbedding(16) tensor, recomputed rather than stored in Flax

LOGICAL_NAMES = {None, "conv_h", "conv_w", "conv_in", "conv_out", "embed", "mlp", "heads", "norm", "buckets",
                 "cond"}
REF_CFG = dict(TINY, cond_dim=6, attn_dim_head=40)  # dim_head > 32: partial rotary


# ---------------------------------------------------------------------------------- layout


def test_param_tree_matches_torch_state_dict_one_to_one():
  model = Unet3D(dim=32, dim_mults=(1, 2), attn_heads=2, attn_dim_head=16)
  flax = flat_params(abstract_params(model, jnp.zeros((1, 4, 16, 16, 3)), jnp.zeros((1,))))
  mapped, dropped = {}, 0
  for line in TORCH_LISTING.strip().splitlines():
    key, shape = line.split("  ")
    shape = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    path, rule = unet3d.torch_key_to_flax(key)
    if rule == "drop":
      assert key.endswith("rotary_emb.freqs")
      dropped += 1
      continue
    path = "/".join(path)
    assert path not in mapped, f"{key} and {mapped.get(path)} both map to {path}"
    assert path in flax, f"{key} -> {path} missing in Flax params"
    expected = unet3d.convert_torch_value(rule, np.zeros(shape, np.float32)).shape
    assert flax[path].shape == expected, (key, path, flax[path].shape, expected)
    mapped[path] = key
  assert dropped == 6 and set(mapped) == set(flax)
  assert sum(int(np.prod(v.shape)) for v in flax.values()) == TORCH_NUM_PARAMETERS - ROTARY_FREQS_NUMEL


def test_param_tree_cond_and_no_linear_attention_variants():
  x, t = jnp.zeros((1, 4, 16, 16, 3)), jnp.zeros((1,))
  cond = flat_params(abstract_params(Unet3D(dim=32, dim_mults=(1, 2), attn_heads=2, attn_dim_head=16, cond_dim=24),
                                x, t, jnp.zeros((1, 24))))
  assert cond["null_cond_emb"].shape == (1, 24)
  assert cond["downs_1_resnet1/mlp/kernel"].shape == (152, 128)  # torch (128, 152): [time_emb ; cond]
  assert cond["mid_block2/mlp/kernel"].shape == (152, 128)
  plain = flat_params(abstract_params(Unet3D(dim=32, dim_mults=(1, 2), attn_heads=2, attn_dim_head=16,
                                        use_sparse_linear_attn=False), x, t))
  assert not any("spatial_attn" in k and not k.startswith("mid_") for k in plain)
  assert len(plain) == 144 - 16


def test_params_carry_logical_axis_names():
  model, _, inp = setup_unet(TEXT_CFG)
  boxed = abstract_params(model, inp["x"], inp["time"], inp["cond"], boxed=True, text_tokens=inp["tokens"])
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
  assert len(leaves) == len(flat_params(nn.unbox(boxed)))
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned)
    assert len(leaf.names) == len(leaf.value.shape) and set(leaf.names) <= LOGICAL_NAMES, leaf.names


def test_invalid_configs_raise():
  with pytest.raises(ValueError, match="init_dim"):
    Unet3D(dim=8, init_dim=16)
  with pytest.raises(ValueError, match="odd"):
    Unet3D(dim=8, init_kernel_size=4)
  x, t = jnp.zeros((1, 2, 8, 8, 3)), jnp.zeros((1,))
  with pytest.raises(ValueError, match="cond"):
    jax.eval_shape(Unet3D(dim=8, dim_mults=(1, 2), cond_dim=4).init, jax.random.key(0), x, t)
  with pytest.raises(ValueError, match="divisible"):
    jax.eval_shape(Unet3D(dim=8, dim_mults=(1, 2, 4, 8)).init, jax.random.key(0),
                   jnp.zeros((1, 2, 12, 12, 3)), t)


@pytest.mark.parametrize("cfg,frames,side", [
    (dict(TINY), 4, 16),
    (dict(TINY, cond_dim=6, text_token_dim=5), 3, 16),
    (dict(dim=8, dim_mults=(1, 2, 4), out_dim=6, init_kernel_size=3, use_sparse_linear_attn=False), 5, 8),
    (dict(dim=16, dim_mults=(1,), attn_heads=1, attn_dim_head=64, channels=1), 1, 6),
])
def test_output_shapes(cfg, frames, side):
  model = Unet3D(**cfg)
  x = jnp.zeros((2, frames, side, side, cfg.get("channels", 3)))
  kwargs = {"cond": jnp.zeros((2, 6))} if "cond_dim" in cfg else {}
  if "text_token_dim" in cfg:
    kwargs.update(text_tokens=jnp.zeros((2, 7, 5)), text_mask=jnp.ones((2, 7), bool))
  out, _ = jax.eval_shape(functools.partial(model.init_with_output, **kwargs), jax.random.key(0), x,
                          jnp.zeros((2,), jnp.int32))
  out_dim = cfg.get("out_dim", cfg.get("channels", 3))
  assert out.shape == x.shape[:-1] + (out_dim,) and out.dtype == jnp.float32


def test_real_init_and_forward():
  model = Unet3D(dim=8, dim_mults=(1,), attn_heads=2, attn_dim_head=8, cond_dim=6, text_token_dim=5)
  inp = unet_inputs()
  out, variables = jax.jit(model.init_with_output)(jax.random.key(0), inp["x"], inp["time"], inp["cond"],
                                                   text_tokens=inp["tokens"])
  params = flat_params(nn.unbox(variables["params"]))
  assert all(v.dtype == jnp.float32 for v in params.values())
  assert np.all(np.asarray(params["downs_0_cross_attn/attn/to_out/kernel"]) == 0)  # starts as identity
  assert np.all(np.asarray(params["downs_0_resnet1/block1/norm/gamma"]) == 1)
  assert out.shape == inp["x"].shape and np.all(np.isfinite(out))


from tests.unet3d_numpy_ref import _TorchView, _reference_unet  # noqa: E402


def test_matches_numpy_transcription_of_torch_forward():
  model, params, inp = setup_unet(REF_CFG)
  apply = jax.jit(model.apply)
  null_cond = np.array([True, False])
  for focus in ([False, True], [True, True], [False, False]):
    focus = np.array(focus)
    out = apply({"params": params}, inp["x"], inp["time"], inp["cond"], null_cond=null_cond,
                focus_present_mask=focus)
    ref = _reference_unet(_TorchView(params), inp["x"], inp["time"], inp["cond"], null_cond, focus, levels=2,
                          heads=2)
    assert out.shape == ref.shape and float(np.std(ref)) > 0.1
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------- behaviour


@pytest.fixture(scope="module")
def text_model():
  model, params, inp = setup_unet(TEXT_CFG, seed=1)
  apply = jax.jit(lambda p, x, cond, tokens, mask, null_cond, focus: model.apply(
      {"params": p}, x, inp["time"], cond, null_cond=null_cond, text_tokens=tokens, text_mask=mask,
      focus_present_mask=focus))
  mask = np.array([[True, True, False], [True, True, True]])
  no = np.zeros((B,), bool)
  run = functools.partial(apply, cond=inp["cond"], tokens=inp["tokens"], mask=mask, null_cond=no, focus=no)
  return run, params, inp


def test_focus_present_mask_stops_temporal_mixing(text_model):
  run, params, inp = text_model
  # The reference's init_temporal_attn never sees the mask; silence it to test every other temporal layer.
  silenced = jax.tree.map(lambda v: v, params)
  silenced["init_temporal_attn"]["attn"]["to_out"]["kernel"] = jnp.zeros_like(
      params["init_temporal_attn"]["attn"]["to_out"]["kernel"])
  x2 = inp["x"].copy()
  x2[:, 2] = -inp["x"][:, 2]
  focus = np.array([True, False])
  for p, other_frames_fixed in ((silenced, True), (params, False)):
    delta = np.abs(np.asarray(run(p, x2, focus=focus)) - np.asarray(run(p, inp["x"], focus=focus)))
    per_frame = delta.reshape(B, T, -1).max(-1)
    assert per_frame[0, 2] > 1e-3 and per_frame[1].min() > 1e-3  # unmasked sample mixes frames
    assert (per_frame[0, [0, 1, 3]].max() < 1e-5) == other_frames_fixed, per_frame


def test_null_cond_ignores_cond_and_text(text_model):
  run, params, inp = text_model
  null_cond = np.array([True, False])
  base = np.asarray(run(params, inp["x"], null_cond=null_cond))
  changed = np.asarray(run(params, inp["x"], cond=-inp["cond"], tokens=inp["tokens"] * 3 + 1,
                           null_cond=null_cond))
  np.testing.assert_allclose(changed[0], base[0], atol=1e-5)
  assert np.abs(changed[1] - base[1]).max() > 1e-3


def test_text_padding_tokens_do_not_matter(text_model):
  run, params, inp = text_model
  base = np.asarray(run(params, inp["x"]))
  tokens = inp["tokens"].copy()
  tokens[0, 2] = 50.0  # masked position of sample 0
  np.testing.assert_allclose(np.asarray(run(params, inp["x"], tokens=tokens)), base, atol=1e-5)
  tokens[0, 1] = 50.0  # a real token: output changes
  assert np.abs(np.asarray(run(params, inp["x"], tokens=tokens))[0] - base[0]).max() > 1e-3


def test_zero_cross_attention_output_is_the_reference_architecture(text_model):
  run, params, inp = text_model
  def zero_out(block):
    kernel = jnp.zeros_like(block["attn"]["to_out"]["kernel"])
    return dict(block, attn=dict(block["attn"], to_out={"kernel": kernel}))
  zeroed = {k: zero_out(v) if k.endswith("cross_attn") else v for k, v in params.items()}
  plain = {k: v for k, v in params.items() if not k.endswith("cross_attn")}
  cfg = {k: v for k, v in TEXT_CFG.items() if k != "text_token_dim"}
  ref = jax.jit(Unet3D(**cfg).apply)({"params": plain}, inp["x"], inp["time"], inp["cond"])
  np.testing.assert_allclose(np.asarray(run(zeroed, inp["x"])), ref, atol=1e-5)


def test_remat_gives_identical_outputs_and_gradients():
  cfg = dict(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8, cond_dim=6)
  _, params, inp = setup_unet(cfg)
  results = []
  for remat in (False, True):
    model = Unet3D(**cfg, remat=remat)

    def loss(p, model=model):
      out = model.apply({"params": p}, inp["x"], inp["time"], inp["cond"])
      return jnp.mean(out**2), out
    results.append(jax.jit(jax.value_and_grad(loss, has_aux=True))(params))
  (l0, o0), g0 = results[0]
  (l1, o1), g1 = results[1]
  # Same math; only XLA's fusion (and so float32 rounding) differs between the two programs.
  np.testing.assert_allclose(o1, o0, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), g1, g0)
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(g0))
  assert float(np.abs(g0["null_cond_emb"]).max()) == 0  # null embedding unused without null_cond
  assert float(np.abs(g0["downs_0_resnet1"]["mlp"]["kernel"]).max()) > 0


def test_bfloat16_compute_stays_close_to_float32():
  model, params, inp = setup_unet(TEXT_CFG, seed=2)
  args = (inp["x"], inp["time"], inp["cond"])
  ref = jax.jit(model.apply)({"params": params}, *args, text_tokens=inp["tokens"])
  bf16 = jax.jit(Unet3D(**TEXT_CFG, dtype=jnp.bfloat16).apply)({"params": params}, *args,
                                                                text_tokens=inp["tokens"])
  assert bf16.dtype == jnp.float32
  rel = float(jnp.linalg.norm(bf16 - ref) / jnp.linalg.norm(ref))
  assert rel < 0.05, rel


def test_sharding_constraints_under_a_mesh_change_nothing(text_model):
  run, params, inp = text_model
  model = Unet3D(**TEXT_CFG)

  def forward(p, x):
    return model.apply({"params": p}, x, inp["time"], inp["cond"], text_tokens=inp["tokens"])
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "tensor"))
  rules = (("batch", "data"), ("height", "tensor"), ("tokens", "tensor"), ("frames", None), ("width", None),
           ("act_channels", None))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    lowered = jax.jit(forward).lower(params, inp["x"])
    sharded = lowered.compile()(params, inp["x"])
  assert lowered.as_text().count("sharding_constraint") > 50
  mask = np.ones((B, L), bool)
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(run(params, inp["x"], mask=mask)), atol=1e-5)


def test_temporal_block_gradient_is_the_gradient_of_its_forward():
  """The temporal block evaluates through Attention on (B, H, W, T, C) sequences and differentiates through
  LeadingAxisAttention on (T, B, H, W, C) (a custom VJP): both must match plain autodiff of the first."""
  x = jax.random.normal(jax.random.key(0), (2, 5, 3, 4, 8))
  pos_bias = jax.random.normal(jax.random.key(1), (2, 5, 5))
  frame_mask = jnp.tril(jnp.ones((5, 5), bool))[None].repeat(2, 0).at[1].set(jnp.eye(5, dtype=bool))
  block = blocks.TemporalAttentionBlock(2, 8, 8)
  params = nn.unbox(jax.jit(block.init)(jax.random.key(2), x, pos_bias, frame_mask)["params"])
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(3), p.shape), params)

  def reference(p, x, b):
    y = norms.ChannelLayerNorm().apply({"params": p["norm"]}, x)
    y = attention.Attention(2, 8, rotary_dim=8).apply({"params": p["attn"]}, jnp.moveaxis(y, 1, -2), bias=b,
                                                       mask=frame_mask[:, None, None, None])
    return x + jnp.moveaxis(y, -2, 1)

  out = jax.jit(lambda p, x, b: block.apply({"params": p}, x, b, frame_mask))(params, x, pos_bias)
  np.testing.assert_allclose(out, jax.jit(reference)(params, x, pos_bias), atol=1e-6)
  loss = lambda f: lambda p, x, b: jnp.sum(jnp.sin(f(p, x, b)))
  grads = jax.jit(jax.grad(loss(lambda p, x, b: block.apply({"params": p}, x, b, frame_mask)), argnums=(0, 1, 2)))(
      params, x, pos_bias)
  expected = jax.jit(jax.grad(loss(reference), argnums=(0, 1, 2)))(params, x, pos_bias)
  for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
    np.testing.assert_allclose(g, e, atol=2e-5, rtol=1e-4)
