"""Unet3D: torch parameter layout, numpy transcription of the torch forward, conditioning, remat, bf16."""
import functools
import math

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen_jax.layers import attention, norms
from vidgen_jax.models import unet3d
from vidgen_jax.models import unet3d_blocks as blocks
from vidgen_jax.models.unet3d import Unet3D

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
TINY = dict(dim=8, dim_mults=(1, 2), attn_heads=2)
TEXT_CFG = dict(TINY, cond_dim=6, attn_dim_head=8, text_token_dim=5)
REF_CFG = dict(TINY, cond_dim=6, attn_dim_head=40)  # dim_head > 32: partial rotary
B, T, S, L = 2, 4, 8, 3


def _flat(tree):
  return {"/".join(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _abstract_params(model, *args, boxed=False, **kwargs):
  variables = jax.eval_shape(functools.partial(model.init, **kwargs), jax.random.key(0), *args)
  return variables["params"] if boxed else nn.unbox(variables["params"])


def _inputs(seed=0, cond_dim=6, text_dim=5):
  rng = np.random.default_rng(seed)
  return dict(x=rng.uniform(-1, 1, (B, T, S, S, 3)).astype(np.float32), time=np.array([3, 977]),
              cond=rng.standard_normal((B, cond_dim)).astype(np.float32),
              tokens=rng.standard_normal((B, L, text_dim)).astype(np.float32))


def _random_params(model, *args, seed=0, **kwargs):
  """Random params of the right tree (fast: no RNG compile); gains near 1, kernels ~ 1/sqrt(fan_in)."""
  rng = np.random.default_rng(seed)

  def make(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "gamma":
      value = 1 + 0.2 * rng.standard_normal(shape)
    elif name == "kernel":
      value = rng.standard_normal(shape) / math.sqrt(np.prod(shape[:-1]))
    else:
      value = 0.5 * rng.standard_normal(shape)
    return jnp.asarray(value, jnp.float32)
  return jax.tree_util.tree_map_with_path(make, _abstract_params(model, *args, **kwargs))


def _setup(cfg, seed=0, **model_kwargs):
  model = Unet3D(**cfg, **model_kwargs)
  inp = _inputs(seed)
  cond = inp["cond"] if cfg.get("cond_dim") else None
  kwargs = dict(text_tokens=inp["tokens"]) if cfg.get("text_token_dim") else {}
  params = _random_params(model, inp["x"], inp["time"], cond, seed=seed, **kwargs)
  return model, params, inp


# ---------------------------------------------------------------------------------- layout


def test_param_tree_matches_torch_state_dict_one_to_one():
  model = Unet3D(dim=32, dim_mults=(1, 2), attn_heads=2, attn_dim_head=16)
  flax = _flat(_abstract_params(model, jnp.zeros((1, 4, 16, 16, 3)), jnp.zeros((1,))))
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
  cond = _flat(_abstract_params(Unet3D(dim=32, dim_mults=(1, 2), attn_heads=2, attn_dim_head=16, cond_dim=24),
                                x, t, jnp.zeros((1, 24))))
  assert cond["null_cond_emb"].shape == (1, 24)
  assert cond["downs_1_resnet1/mlp/kernel"].shape == (152, 128)  # torch (128, 152): [time_emb ; cond]
  assert cond["mid_block2/mlp/kernel"].shape == (152, 128)
  plain = _flat(_abstract_params(Unet3D(dim=32, dim_mults=(1, 2), attn_heads=2, attn_dim_head=16,
                                        use_sparse_linear_attn=False), x, t))
  assert not any("spatial_attn" in k and not k.startswith("mid_") for k in plain)
  assert len(plain) == 144 - 16


def test_params_carry_logical_axis_names():
  model, _, inp = _setup(TEXT_CFG)
  boxed = _abstract_params(model, inp["x"], inp["time"], inp["cond"], boxed=True, text_tokens=inp["tokens"])
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
  assert len(leaves) == len(_flat(nn.unbox(boxed)))
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
  inp = _inputs()
  out, variables = jax.jit(model.init_with_output)(jax.random.key(0), inp["x"], inp["time"], inp["cond"],
                                                   text_tokens=inp["tokens"])
  params = _flat(nn.unbox(variables["params"]))
  assert all(v.dtype == jnp.float32 for v in params.values())
  assert np.all(np.asarray(params["downs_0_cross_attn/attn/to_out/kernel"]) == 0)  # starts as identity
  assert np.all(np.asarray(params["downs_0_resnet1/block1/norm/gamma"]) == 1)
  assert out.shape == inp["x"].shape and np.all(np.isfinite(out))


from tests.unet3d_numpy_ref import _TorchView, _reference_unet  # noqa: E402


def test_matches_numpy_transcription_of_torch_forward():
  model, params, inp = _setup(REF_CFG)
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
  model, params, inp = _setup(TEXT_CFG, seed=1)
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
  _, params, inp = _setup(cfg)
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
  model, params, inp = _setup(TEXT_CFG, seed=2)
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


def test_absolute_frame_embedding_is_optional_and_breaks_time_shift_symmetry():
  model, params, inp = _setup(dict(TINY, max_frames_embedding=6))
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
  model, params, inp = _setup(cfg, seed=3)
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
  fresh = nn.unbox(model.init(jax.random.key(0), inp["x"], inp["time"], inp["cond"])["params"])
  assert not np.any(fresh["frame_cond_mlp"]["dense_out"]["kernel"])  # zero-initialised: starts as reference
  with pytest.raises(ValueError, match="frame_cond_mlp"):
    Unet3D(dim=8, dim_mults=(1,), frame_cond_mlp=8)


def test_position_features_start_as_identity_and_feed_absolute_positions():
  from vidgen_jax.layers import embeddings
  grid = np.asarray(embeddings.fourier_grid_embedding(4, 6, 2))
  assert grid.shape == (4, 6, 8)
  np.testing.assert_allclose(grid[:, :, :4], grid[:, :1, :4].repeat(6, 1))    # row features: same along a row
  np.testing.assert_allclose(grid[1, 2, 4:], [np.sin(np.pi * -1 / 6), np.sin(2 * np.pi * -1 / 6),
                                              np.cos(np.pi * -1 / 6), np.cos(2 * np.pi * -1 / 6)], atol=1e-6)
  model, params, inp = _setup(dict(TINY, position_features=3), seed=4)
  assert params["position_proj"]["kernel"].shape == (12, TINY["dim"])
  x = np.zeros_like(inp["x"])                                          # no input signal: only positions
  apply = jax.jit(lambda m, p, x: m.apply({"params": p}, x, inp["time"]), static_argnums=0)
  plain = Unet3D(**TINY)
  rest = {k: v for k, v in params.items() if k != "position_proj"}
  assert np.abs(np.asarray(apply(model, params, x)) - np.asarray(apply(plain, rest, x))).max() > 1e-3
  zero = dict(params, position_proj={"kernel": jnp.zeros_like(params["position_proj"]["kernel"])})
  np.testing.assert_allclose(apply(model, zero, inp["x"]), apply(plain, rest, inp["x"]), atol=1e-5)
  fresh = nn.unbox(model.init(jax.random.key(0), inp["x"], inp["time"])["params"])
  assert not np.any(fresh["position_proj"]["kernel"])                  # zero-initialised: starts as reference
  wide = np.zeros((B, T, S, 2 * S, 3), np.float32)                     # any grid size works
  assert apply(model, params, wide).shape == wide.shape


def test_text_cond_mlp_pools_real_tokens_into_film_and_respects_null_cond():
  cfg = dict(TEXT_CFG, cross_attention=False, text_cond_mlp=16)
  model, params, inp = _setup(cfg, seed=2)
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
  model, params, inp = _setup(dict(TINY, temporal_conv=3))
  real = _flat(nn.unbox(jax.eval_shape(model.init, jax.random.key(0), inp["x"], inp["time"])["params"]))
  names = [k for k in real if "temporal_conv" in k]
  assert names and not any(k.startswith("final_block") for k in names)
  assert real["downs_0_resnet1/temporal_conv/kernel"].shape == (3, 8, 8)
  init = _flat(nn.unbox(jax.jit(model.init)(jax.random.key(0), inp["x"], inp["time"])["params"]))
  assert all(np.all(np.asarray(init[k]) == 0) for k in names)
  params = {k: jnp.zeros_like(v) if "temporal_conv" in k else v for k, v in _flat(params).items()}
  rest = {k: v for k, v in params.items() if "temporal_conv" not in k}
  unflat = lambda flat: traverse_util.unflatten_dict(flat, sep="/")
  np.testing.assert_allclose(jax.jit(model.apply)({"params": unflat(params)}, inp["x"], inp["time"]),
                             jax.jit(Unet3D(**TINY).apply)({"params": unflat(rest)}, inp["x"], inp["time"]),
                             atol=1e-5)
  grads = _flat(jax.jit(jax.grad(lambda p: (model.apply({"params": p}, inp["x"], inp["time"]) ** 2).sum()))(
      unflat(params)))
  assert all(np.abs(np.asarray(grads[k])).max() > 0 for k in names)


def test_per_frame_time_matches_shared_time_and_conditions_each_frame():
  """time (B, T): equal per-frame times give the (B,) output; a frame's own time changes that frame."""
  model, params, inp = _setup(dict(TINY, cond_dim=6), seed=4)
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
  params = _random_params(model, x, np.array([3, 977]))
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



def test_temporal_block_gradient_is_the_gradient_of_its_forward():
  """The temporal block evaluates through Attention on (B, H, W, T, C) sequences and differentiates through
  LeadingAxisAttention on (T, B, H, W, C) (a custom VJP): both must match plain autodiff of the first."""
  x = jax.random.normal(jax.random.key(0), (2, 5, 3, 4, 8))
  pos_bias = jax.random.normal(jax.random.key(1), (2, 5, 5))
  frame_mask = jnp.tril(jnp.ones((5, 5), bool))[None].repeat(2, 0).at[1].set(jnp.eye(5, dtype=bool))
  block = blocks.TemporalAttentionBlock(2, 8, 8)
  params = nn.unbox(block.init(jax.random.key(2), x, pos_bias, frame_mask)["params"])
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(3), p.shape), params)

  def reference(p, x, b):
    y = norms.ChannelLayerNorm().apply({"params": p["norm"]}, x)
    y = attention.Attention(2, 8, rotary_dim=8).apply({"params": p["attn"]}, jnp.moveaxis(y, 1, -2), bias=b,
                                                       mask=frame_mask[:, None, None, None])
    return x + jnp.moveaxis(y, -2, 1)

  out = block.apply({"params": params}, x, pos_bias, frame_mask)
  np.testing.assert_allclose(out, reference(params, x, pos_bias), atol=1e-6)
  loss = lambda f: lambda p, x, b: jnp.sum(jnp.sin(f(p, x, b)))
  grads = jax.grad(loss(lambda p, x, b: block.apply({"params": p}, x, b, frame_mask)), argnums=(0, 1, 2))(
      params, x, pos_bias)
  expected = jax.grad(loss(reference), argnums=(0, 1, 2))(params, x, pos_bias)
  for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
    np.testing.assert_allclose(g, e, atol=2e-5, rtol=1e-4)
