"""Unet3D: torch parameter layout, numpy transcription of the torch forward, conditioning, remat, bf16."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen_jax.models import unet3d
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


# ---------------------------------------------------------------------------------- numpy reference


def _bucket(rel, num_buckets=32, max_distance=32):
  n = -rel
  num_buckets //= 2
  ret = (n < 0).astype(np.int64) * num_buckets
  n = np.abs(n)
  max_exact = num_buckets // 2
  scaled = np.log(np.maximum(n, 1).astype(np.float32) / np.float32(max_exact))
  large = max_exact + (scaled / np.float32(math.log(max_distance / max_exact))
                       * np.float32(num_buckets - max_exact)).astype(np.int64)
  return ret + np.where(n < max_exact, n, np.minimum(large, num_buckets - 1))


class _TorchView:
  """Torch state_dict view of Flax params: key -> float64 array in torch layout (pointwise as (o, i))."""
  INVERSE = {"copy": lambda k: k, "linear": lambda k: k.T, "flatten": lambda k: k, "pointwise": lambda k: k.T,
             "conv": lambda k: k.transpose(3, 2, 0, 1)[:, :, None],
             "conv_transpose": lambda k: k.transpose(2, 3, 0, 1)[:, :, None]}

  def __init__(self, params):
    self.params = params

  def __contains__(self, key):
    try:
      return unet3d.torch_key_to_flax(key)[0] is not None and self[key] is not None
    except KeyError:
      return False

  def __getitem__(self, key):
    path, rule = unet3d.torch_key_to_flax(key)
    value = self.params
    for name in path:
      value = value[name]
    value = np.asarray(value, np.float64)
    torch_value = self.INVERSE[rule](value)
    np.testing.assert_array_equal(unet3d.convert_torch_value(rule, torch_value), value)
    return torch_value


def _silu(x):
  return x / (1 + np.exp(-x))


def _softmax(x, axis=-1):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _conv(x, w, b, stride=1, pad=0):
  """torch Conv3d with kernel (1, kh, kw) on (B, C, T, H, W)."""
  kh, kw = w.shape[-2:]
  xp = np.pad(x, ((0, 0),) * 3 + ((pad, pad),) * 2)
  ho, wo = (xp.shape[3] - kh) // stride + 1, (xp.shape[4] - kw) // stride + 1
  out = 0
  for a in range(kh):
    for c in range(kw):
      patch = xp[..., a:a + stride * (ho - 1) + 1:stride, c:c + stride * (wo - 1) + 1:stride]
      out = out + np.einsum("bithw,oi->bothw", patch, w[:, :, 0, a, c])
  return out + b[:, None, None, None]


def _conv_transpose(x, w, b, stride=2, pad=1):
  """torch ConvTranspose3d with kernel (1, k, k) as a scatter-add, cropped by `pad`."""
  k, (h, wd) = w.shape[-1], x.shape[-2:]
  full = np.zeros(x.shape[:1] + (w.shape[1], x.shape[2], (h - 1) * stride + k, (wd - 1) * stride + k))
  for a in range(k):
    for c in range(k):
      full[..., a:a + stride * (h - 1) + 1:stride, c:c + stride * (wd - 1) + 1:stride] += np.einsum(
          "bithw,io->bothw", x, w[:, :, 0, a, c])
  return full[..., pad:full.shape[-2] - pad, pad:full.shape[-1] - pad] + b[:, None, None, None]


def _pointwise(x, w, b=None):
  out = np.einsum("bi...,oi->bo...", x, w)
  return out if b is None else out + b.reshape((-1,) + (1,) * (x.ndim - 2))


def _layer_norm(x, gamma):
  normed = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
  return normed * gamma.reshape(1, -1, 1, 1, 1)


def _resnet(sd, pre, x, t):
  scale_shift = None
  if t is not None:
    e = _silu(t) @ sd[pre + "mlp.1.weight"].T + sd[pre + "mlp.1.bias"]
    scale_shift = np.split(e[:, :, None, None, None], 2, axis=1)
  h = x
  for i, ss in ((1, scale_shift), (2, None)):
    h = _conv(h, sd[f"{pre}block{i}.proj.weight"], sd[f"{pre}block{i}.proj.bias"], pad=1)
    norm = np.maximum(np.sqrt((h**2).sum(1, keepdims=True)), 1e-12)
    h = h / norm * math.sqrt(h.shape[1]) * sd[f"{pre}block{i}.norm.gamma"].reshape(1, -1, 1, 1, 1)
    if ss is not None:
      h = h * (ss[0] + 1) + ss[1]
    h = _silu(h)
  if x.shape[1] != h.shape[1]:
    x = _pointwise(x, sd[pre + "res_conv.weight"], sd[pre + "res_conv.bias"])
  return h + x


def _attention(sd, pre, x, heads, rotary=False, pos_bias=None, focus=None):
  """video-diffusion Attention.forward on (b, ..., n, c), including the all-focused short-circuit."""
  n = x.shape[-2]
  q, k, v = np.split(x @ sd[pre + "to_qkv.weight"].T, 3, axis=-1)
  if focus is not None and focus.all():
    return v @ sd[pre + "to_out.weight"].T
  d = q.shape[-1] // heads
  q, k, v = (t.reshape(*t.shape[:-1], heads, d).swapaxes(-2, -3) for t in (q, k, v))
  q = q * d**-0.5
  if rotary:
    rot = min(32, d)
    freqs = 1.0 / (10000 ** (np.arange(0, rot, 2)[: rot // 2] / rot))
    ang = np.repeat(np.arange(n)[:, None] * freqs, 2, axis=-1)

    def rotate(t):
      mid = t[..., :rot]
      pairs = mid.reshape(*mid.shape[:-1], rot // 2, 2)
      half = np.stack([-pairs[..., 1], pairs[..., 0]], -1).reshape(mid.shape)
      return np.concatenate([mid * np.cos(ang) + half * np.sin(ang), t[..., rot:]], axis=-1)
    q, k = rotate(q), rotate(k)
  sim = q @ k.swapaxes(-1, -2)
  if pos_bias is not None:
    sim = sim + pos_bias
  if focus is not None and focus.any():
    mask = np.where(focus[:, None, None, None, None], np.eye(n, dtype=bool), True)
    sim = np.where(mask, sim, -np.finfo(np.float32).max)
  out = (_softmax(sim) @ v).swapaxes(-2, -3)
  return out.reshape(*out.shape[:-2], -1) @ sd[pre + "to_out.weight"].T


def _temporal_block(sd, pre, x, heads, pos_bias, focus):
  b, c, f, h, w = x.shape
  y = _layer_norm(x, sd[pre + "fn.norm.gamma"]).transpose(0, 3, 4, 2, 1).reshape(b, h * w, f, c)
  y = _attention(sd, pre + "fn.fn.fn.", y, heads, rotary=True, pos_bias=pos_bias, focus=focus)
  return x + y.reshape(b, h, w, f, c).transpose(0, 4, 3, 1, 2)


def _mid_spatial_block(sd, pre, x, heads):
  b, c, f, h, w = x.shape
  y = _layer_norm(x, sd[pre + "fn.norm.gamma"]).transpose(0, 2, 3, 4, 1).reshape(b, f, h * w, c)
  y = _attention(sd, pre + "fn.fn.fn.", y, heads)
  return x + y.reshape(b, f, h, w, c).transpose(0, 4, 1, 2, 3)


def _linear_attn_block(sd, pre, x, heads):
  b, c, f, h, w = x.shape
  y = _layer_norm(x, sd[pre + "fn.norm.gamma"]).transpose(0, 2, 1, 3, 4).reshape(b * f, c, h * w)
  q, k, v = np.split(_pointwise(y, sd[pre + "fn.fn.to_qkv.weight"]), 3, axis=1)
  q, k, v = (t.reshape(b * f, heads, -1, h * w) for t in (q, k, v))
  q, k = _softmax(q, axis=-2) * q.shape[-2] ** -0.5, _softmax(k, axis=-1)
  out = np.einsum("bhde,bhdn->bhen", np.einsum("bhdn,bhen->bhde", k, v), q).reshape(b * f, -1, h * w)
  out = _pointwise(out, sd[pre + "fn.fn.to_out.weight"], sd[pre + "fn.fn.to_out.bias"])
  return x + out.reshape(b, f, c, h, w).transpose(0, 2, 1, 3, 4)


def _reference_unet(sd, x, time, cond, null_cond, focus, *, levels, heads):
  """Numpy float64 transcription of video_diffusion_pytorch 0.7.0 Unet3D.forward (channels-first inside)."""
  x = np.asarray(x, np.float64).transpose(0, 4, 1, 2, 3)
  f = x.shape[2]
  pos_bias = sd["time_rel_pos_bias.relative_attention_bias.weight"][_bucket(
      np.arange(f)[None, :] - np.arange(f)[:, None])].transpose(2, 0, 1)
  w = sd["init_conv.weight"]
  x = _conv(x, w, sd["init_conv.bias"], pad=w.shape[-1] // 2)
  x = _temporal_block(sd, "init_temporal_attn.", x, heads, pos_bias, None)
  r = x
  dim = sd["time_mlp.1.weight"].shape[1]
  freqs = np.exp(np.arange(dim // 2) * -(math.log(10000) / (dim // 2 - 1)))
  emb = np.asarray(time, np.float64)[:, None] * freqs[None]
  t = np.concatenate([np.sin(emb), np.cos(emb)], axis=-1) @ sd["time_mlp.1.weight"].T + sd["time_mlp.1.bias"]
  t = 0.5 * t * (1 + np.vectorize(math.erf)(t / math.sqrt(2)))
  t = t @ sd["time_mlp.3.weight"].T + sd["time_mlp.3.bias"]
  if cond is not None:
    t = np.concatenate([t, np.where(null_cond[:, None], sd["null_cond_emb"], cond)], axis=-1)
  skips = []
  for i in range(levels):
    x = _resnet(sd, f"downs.{i}.1.", _resnet(sd, f"downs.{i}.0.", x, t), t)
    x = _linear_attn_block(sd, f"downs.{i}.2.", x, heads)
    x = _temporal_block(sd, f"downs.{i}.3.", x, heads, pos_bias, focus)
    skips.append(x)
    if i < levels - 1:
      x = _conv(x, sd[f"downs.{i}.4.weight"], sd[f"downs.{i}.4.bias"], stride=2, pad=1)
  x = _resnet(sd, "mid_block1.", x, t)
  x = _mid_spatial_block(sd, "mid_spatial_attn.", x, heads)
  x = _temporal_block(sd, "mid_temporal_attn.", x, heads, pos_bias, focus)
  x = _resnet(sd, "mid_block2.", x, t)
  for i in range(levels):
    x = np.concatenate([x, skips.pop()], axis=1)
    x = _resnet(sd, f"ups.{i}.1.", _resnet(sd, f"ups.{i}.0.", x, t), t)
    x = _linear_attn_block(sd, f"ups.{i}.2.", x, heads)
    x = _temporal_block(sd, f"ups.{i}.3.", x, heads, pos_bias, focus)
    if i < levels - 1:
      x = _conv_transpose(x, sd[f"ups.{i}.4.weight"], sd[f"ups.{i}.4.bias"])
  x = _resnet(sd, "final_conv.0.", np.concatenate([x, r], axis=1), None)
  x = _pointwise(x, sd["final_conv.1.weight"], sd["final_conv.1.bias"])
  return x.transpose(0, 2, 3, 4, 1)


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
