"""Layer-level checks: space convs vs 3D convs / torch ConvTranspose, norms, embeddings, rotary, attention."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vidgen_jax.layers import attention, conv, embeddings, norms, position
from vidgen_jax.models import unet3d

RNG = np.random.default_rng(0)


def _randn(*shape):
  return RNG.standard_normal(shape).astype(np.float32)


def _apply(module, params, *args, **kwargs):
  return module.apply({"params": params}, *args, **kwargs)


# ---------------------------------------------------------------------------------- convs


@pytest.mark.parametrize("kernel,strides,padding", [((3, 3), 1, 1), ((7, 7), 1, 3), ((4, 4), 2, 1),
                                                    ((1, 3), 1, (0, 1))])
def test_space_conv_equals_conv3d_with_unit_time_kernel(kernel, strides, padding):
  x = _randn(2, 3, 8, 8, 5)
  params = {"kernel": _randn(*kernel, 5, 6), "bias": _randn(6)}
  module = conv.SpaceConv(6, kernel, strides=(strides, strides), padding=padding)
  y = _apply(module, params, x)
  pads = (padding, padding) if isinstance(padding, int) else padding
  ref = lax.conv_general_dilated(
      x, params["kernel"][None], window_strides=(1, strides, strides),
      padding=((0, 0), (pads[0], pads[0]), (pads[1], pads[1])),
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC")) + params["bias"]
  np.testing.assert_allclose(y, ref, atol=1e-5, rtol=1e-5)


def test_space_downsample_halves():
  y = conv.SpaceDownsample(4).init_with_output(jax.random.key(0), jnp.ones((1, 2, 8, 6, 3)))[0]
  assert y.shape == (1, 2, 4, 3, 4)


def _torch_conv_transpose_numpy(x, w, b, stride, padding):
  """torch ConvTranspose2d on NHWC x with torch weight (in, out, k, k): scatter-add, then crop `padding`."""
  n, h, wd, _ = x.shape
  k = w.shape[-1]
  full = np.zeros((n, (h - 1) * stride + k, (wd - 1) * stride + k, w.shape[1]), np.float64)
  for i in range(h):
    for j in range(wd):
      full[:, i * stride:i * stride + k, j * stride:j * stride + k, :] += np.einsum(
          "nc,cokl->nklo", x[:, i, j, :].astype(np.float64), w)
  out_h, out_w = full.shape[1] - 2 * padding, full.shape[2] - 2 * padding
  return full[:, padding:padding + out_h, padding:padding + out_w] + b


@pytest.mark.parametrize("k,stride,padding", [(4, 2, 1), (3, 2, 1), (4, 2, 0), (3, 1, 1)])
def test_space_upsample_equals_torch_conv_transpose(k, stride, padding):
  x = _randn(2, 3, 5, 4, 6)  # (B, T, H, W, C)
  w_torch = _randn(6, 7, 1, k, k)  # ConvTranspose3d weight (in, out, 1, k, k)
  bias = _randn(7)
  kernel = unet3d.convert_torch_value("conv_transpose", w_torch)
  module = conv.SpaceUpsample(7, (k, k), strides=(stride, stride), padding=padding)
  y = np.asarray(_apply(module, {"kernel": kernel, "bias": bias}, x))
  ref = _torch_conv_transpose_numpy(x.reshape(6, 5, 4, 6), w_torch[:, :, 0], bias, stride, padding)
  assert y.shape == (2, 3) + ref.shape[1:]
  assert y.shape[2] == (5 - 1) * stride - 2 * padding + k
  np.testing.assert_allclose(y.reshape(ref.shape), ref, atol=1e-4, rtol=1e-5)


def test_default_upsample_doubles_exactly():
  y = conv.SpaceUpsample(4).init_with_output(jax.random.key(0), jnp.ones((1, 2, 5, 3, 3)))[0]
  assert y.shape == (1, 2, 10, 6, 4)


def test_pointwise_conv_is_torch_1x1x1_conv():
  x, w, b = _randn(2, 3, 4, 4, 5), _randn(6, 5, 1, 1, 1), _randn(6)
  y = _apply(conv.PointwiseConv(6), {"kernel": unet3d.convert_torch_value("pointwise", w), "bias": b}, x)
  np.testing.assert_allclose(y, np.einsum("bthwi,oi->bthwo", x, w[:, :, 0, 0, 0]) + b, atol=1e-5)


def test_temporal_conv_is_conv3d_with_time_only_kernel():
  x = _randn(2, 5, 3, 4, 6)
  params = {"kernel": _randn(3, 6, 7), "bias": _randn(7)}
  y = _apply(conv.TemporalConv(7, 3), params, x)
  ref = lax.conv_general_dilated(x, params["kernel"][:, None, None], window_strides=(1, 1, 1),
                                 padding=((1, 1), (0, 0), (0, 0)),
                                 dimension_numbers=("NDHWC", "DHWIO", "NDHWC")) + params["bias"]
  np.testing.assert_allclose(y, ref, atol=1e-5, rtol=1e-5)
  # frame t only sees frames t-1..t+1: the Jacobian of frame 0 w.r.t. frames 2.. is zero
  jac = jax.jacobian(lambda v: _apply(conv.TemporalConv(7, 3), params, v)[0, 0].sum())(x)
  assert np.abs(jac[0, 2:]).max() == 0 and np.abs(jac[0, :2]).max() > 0


def test_temporal_conv_starts_at_zero_and_rejects_bad_shapes():
  x = jnp.asarray(_randn(1, 4, 2, 2, 3))
  y, variables = conv.TemporalConv(3, 5).init_with_output(jax.random.key(0), x)
  assert variables["params"]["kernel"].value.shape == (5, 3, 3) and np.all(np.asarray(y) == 0)
  with pytest.raises(ValueError, match="odd"):
    conv.TemporalConv(3, 2).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="B, T, H, W, C"):
    conv.TemporalConv(3, 3).init(jax.random.key(0), x[0])


# ---------------------------------------------------------------------------------- norms


def test_channel_rms_norm_is_torch_normalize_times_sqrt_c():
  x, gamma = _randn(2, 3, 4, 4, 6), _randn(6)
  x[0, 0, 0, 0] = 0.0  # F.normalize clamps the norm at 1e-12: a zero vector stays zero
  y = np.asarray(_apply(norms.ChannelRMSNorm(), {"gamma": gamma}, x))
  norm = np.maximum(np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True), 1e-12)
  np.testing.assert_allclose(y, x / norm * math.sqrt(6) * gamma, atol=1e-5, rtol=1e-5)
  assert np.all(y[0, 0, 0, 0] == 0)


def test_channel_layer_norm_biased_variance_eps_1e5():
  x, gamma = 3 + 0.01 * _randn(2, 5, 6), _randn(6)
  y = np.asarray(_apply(norms.ChannelLayerNorm(), {"gamma": gamma}, x))
  x64 = x.astype(np.float64)
  ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * gamma
  np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-4)


def test_norms_respect_compute_dtype():
  x = jnp.asarray(_randn(2, 4, 8), jnp.bfloat16)
  for module in (norms.ChannelRMSNorm(dtype=jnp.bfloat16), norms.ChannelLayerNorm(dtype=jnp.bfloat16)):
    y, variables = module.init_with_output(jax.random.key(0), x)
    assert y.dtype == jnp.bfloat16 and variables["params"]["gamma"].value.dtype == jnp.float32


# ---------------------------------------------------------------------------------- embeddings


def test_sinusoidal_embedding():
  t = np.array([0, 1, 7, 999])
  emb = np.asarray(embeddings.sinusoidal_embedding(jnp.asarray(t), 16))
  freqs = np.exp(-math.log(10000) * np.arange(8) / 7)
  ref = np.concatenate([np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)], axis=-1)
  assert emb.shape == (4, 16) and emb.dtype == np.float32
  np.testing.assert_allclose(emb, ref, atol=2e-4)


def _numpy_t5_bucket(rel, num_buckets, max_distance):
  """Direct transcription of torch RelativePositionBias._relative_position_bucket (float32 log)."""
  n = -rel
  num_buckets //= 2
  ret = (n < 0).astype(np.int64) * num_buckets
  n = np.abs(n)
  max_exact = num_buckets // 2
  n_safe = np.maximum(n, 1).astype(np.float32)  # log(0) is never selected below
  scaled = np.log(n_safe / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
  large = max_exact + (scaled * np.float32(num_buckets - max_exact)).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return ret + np.where(n < max_exact, n, large)


@pytest.mark.parametrize("n", [1, 6, 40])
def test_relative_position_bias_matches_numpy(n):
  table = _randn(32, 3)
  module = embeddings.RelativePositionBias(3, max_distance=32)
  bias = np.asarray(_apply(module, {"relative_attention_bias": table}, n))
  rel = np.arange(n)[None, :] - np.arange(n)[:, None]
  ref = table[_numpy_t5_bucket(rel, 32, 32)].transpose(2, 0, 1)
  assert bias.shape == (3, n, n)
  np.testing.assert_array_equal(bias, ref)


# ---------------------------------------------------------------------------------- rotary


def test_rotary_preserves_norm_and_depends_on_relative_position():
  dim_head, rot = 40, 32
  q, k = _randn(dim_head), _randn(dim_head)
  angles = position.rotary_angles(jnp.arange(20), rot)
  rq = np.asarray(position.apply_rotary(jnp.broadcast_to(q, (20, dim_head)), angles))
  rk = np.asarray(position.apply_rotary(jnp.broadcast_to(k, (20, dim_head)), angles))
  np.testing.assert_allclose(np.linalg.norm(rq, axis=-1), np.linalg.norm(q), rtol=1e-5)
  # Partial rotation: channels past rot_dim pass through.
  np.testing.assert_array_equal(rq[:, rot:], np.broadcast_to(q[rot:], (20, dim_head - rot)))
  dots = rq @ rk.T
  for offset in (0, 1, 5):
    diag = np.diagonal(dots, offset)
    np.testing.assert_allclose(diag, diag[0], rtol=1e-4, atol=1e-4)
  assert not np.allclose(dots[0, 1], dots[0, 2])


def test_rotary_rotates_adjacent_pairs_with_lang_frequencies():
  x = np.zeros((1, 8), np.float32)
  x[0, 2] = 1.0  # second pair, frequency 10000 ** (-2 / 8)
  y = np.asarray(position.apply_rotary(jnp.asarray(x), position.rotary_angles(jnp.array([3.0]), 8)))
  f = 10000.0 ** (-2 / 8)
  np.testing.assert_allclose(y[0], [0, 0, math.cos(3 * f), math.sin(3 * f), 0, 0, 0, 0], atol=1e-6)


# ---------------------------------------------------------------------------------- attention


def _softmax(x, axis=-1):
  x = x - x.max(axis=axis, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=axis, keepdims=True)


def test_dot_product_attention_bias_mask_and_empty_rows():
  q, k, v = _randn(2, 5, 3, 4), _randn(2, 6, 3, 4), _randn(2, 6, 3, 4)
  bias, mask = _randn(3, 5, 6), RNG.random((2, 1, 5, 6)) > 0.3
  mask[0, 0, 1] = False  # a fully masked row: uniform average, no NaN
  out = np.asarray(attention.dot_product_attention(q, k, v, bias=bias, mask=mask))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) + bias
  logits = np.where(mask, logits, -np.finfo(np.float32).max)
  ref = np.einsum("bhqk,bkhd->bqhd", _softmax(logits), v)
  np.testing.assert_allclose(out, ref, atol=1e-5)
  np.testing.assert_allclose(out[0, 1], v[0].mean(0), atol=1e-5)


def _torch_attention_numpy(x, w_qkv, w_out, heads, rot_dim=None):
  """video-diffusion Attention.forward on (..., n, c) with torch Linear weights (out, in)."""
  q, k, v = np.split(x @ w_qkv.T, 3, axis=-1)
  d = q.shape[-1] // heads
  q, k, v = (t.reshape(*t.shape[:-1], heads, d).swapaxes(-2, -3) for t in (q, k, v))  # ... h n d
  q = q * d**-0.5
  if rot_dim:
    n = x.shape[-2]
    freqs = 1.0 / (10000 ** (np.arange(0, rot_dim, 2) / rot_dim))
    ang = np.repeat(np.arange(n)[:, None] * freqs, 2, axis=-1)

    def rot(t):
      mid = t[..., :rot_dim]
      pairs = mid.reshape(*mid.shape[:-1], rot_dim // 2, 2)
      half = np.stack([-pairs[..., 1], pairs[..., 0]], -1).reshape(mid.shape)
      return np.concatenate([mid * np.cos(ang) + half * np.sin(ang), t[..., rot_dim:]], -1)
    q, k = rot(q), rot(k)
  attn = _softmax(q @ k.swapaxes(-1, -2))
  out = (attn @ v).swapaxes(-2, -3)
  return out.reshape(*out.shape[:-2], -1) @ w_out.T


@pytest.mark.parametrize("dim_head,rot_dim", [(8, None), (8, 8), (40, 32)])
def test_attention_matches_torch_layout(dim_head, rot_dim):
  heads, c = 2, 6
  x = _randn(3, 7, c)
  w_qkv, w_out = _randn(3 * heads * dim_head, c), _randn(c, heads * dim_head)
  module = attention.Attention(heads, dim_head, rotary_dim=rot_dim)
  params = {"to_qkv": {"kernel": w_qkv.T}, "to_out": {"kernel": w_out.T}}
  ref = _torch_attention_numpy(x, w_qkv, w_out, heads, rot_dim)
  np.testing.assert_allclose(_apply(module, params, x), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fold_values", [None, True, False])
def test_spatial_linear_attention_matches_torch_layout(fold_values):
  heads, d, c, n = 2, 32, 6, 10
  x = _randn(3, n, c)
  w_qkv, w_out, b_out = _randn(3 * heads * d, c, 1, 1), _randn(c, heads * d, 1, 1), _randn(c)
  params = {"to_qkv": {"kernel": unet3d.convert_torch_value("pointwise", w_qkv)},
            "to_out": {"kernel": unet3d.convert_torch_value("pointwise", w_out), "bias": b_out}}
  y = _apply(attention.SpatialLinearAttention(heads, d, fold_values=fold_values), params, x)
  # torch: 'b (h c) n' layout, q softmax over c, k softmax over n, context = k v^T, out = context^T q.
  qkv = np.einsum("oc,bnc->bon", w_qkv[:, :, 0, 0], x)
  q, k, v = (t.reshape(3, heads, d, n) for t in np.split(qkv, 3, 1))
  q, k = _softmax(q, axis=-2) * d**-0.5, _softmax(k, axis=-1)
  out = np.einsum("bhde,bhdn->bhen", np.einsum("bhdn,bhen->bhde", k, v), q).reshape(3, heads * d, n)
  ref = np.einsum("oc,bcn->bno", w_out[:, :, 0, 0], out) + b_out
  np.testing.assert_allclose(y, ref, atol=1e-5, rtol=1e-4)


def test_cross_attention_null_token_and_padding():
  x, ctx = jnp.asarray(_randn(2, 5, 8)), jnp.asarray(_randn(2, 4, 6))
  mask = jnp.array([[True, True, False, False], [False, False, False, False]])
  module = attention.CrossAttention(heads=2, dim_head=4, zero_init_output=False)
  y, variables = module.init_with_output(jax.random.key(0), x, ctx, mask)
  assert y.shape == (2, 5, 8) and np.all(np.isfinite(y))
  padded = ctx.at[:, 2:].set(100.0)  # padding tokens must not matter
  np.testing.assert_allclose(module.apply(variables, x, padded, mask), y, atol=1e-6)
  # A sample with every token masked attends only to the null key/value: out = to_out(null_v).
  params = variables["params"]
  null_v = params["null_kv"].value[1]
  expected = np.broadcast_to(null_v @ params["to_out"]["kernel"].value, (5, 8))
  np.testing.assert_allclose(y[1], expected, atol=1e-5)
  zero_module = attention.CrossAttention(heads=2, dim_head=4)
  zero_init = zero_module.init_with_output(jax.random.key(0), x, ctx, mask)[0]
  assert np.all(np.asarray(zero_init) == 0)


@pytest.mark.parametrize("dim_head,rot_dim,masked", [(8, None, False), (8, 8, True), (40, 32, True)])
def test_leading_axis_attention_equals_attention_on_moved_axes(dim_head, rot_dim, masked):
  """Same parameters, same numbers as `Attention` over (..., L, C) sequences, for x laid out (L, ..., C)."""
  heads, length, c = 2, 5, 6
  x = jnp.asarray(_randn(length, 3, 4, c))            # (L, B, P, C)
  bias = jnp.asarray(_randn(heads, length, length))
  mask = None
  if masked:   # per-B masks, (B, 1, 1, L, L) against logits (B, P, H, L, L); one row attends to nothing
    mask = jnp.asarray(np.random.default_rng(1).random((3, 1, 1, length, length)) > 0.4).at[0, 0, 0, 2].set(False)
  leading = attention.LeadingAxisAttention(heads, dim_head, rotary_dim=rot_dim)
  params = leading.init(jax.random.key(0), x, bias, mask)["params"]
  y = _apply(leading, params, x, bias, mask)
  moved = jnp.moveaxis(x, 0, -2)                      # (B, P, L, C)
  ref = _apply(attention.Attention(heads, dim_head, rotary_dim=rot_dim), params, moved, bias, mask)
  np.testing.assert_allclose(y, jnp.moveaxis(ref, -2, 0), atol=2e-6, rtol=1e-5)
  grad = jax.grad(lambda p: jnp.sum(jnp.sin(_apply(leading, p, x, bias, mask))))(params)
  grad_ref = jax.grad(lambda p: jnp.sum(jnp.sin(jnp.moveaxis(
      _apply(attention.Attention(heads, dim_head, rotary_dim=rot_dim), p, moved, bias, mask), -2, 0))))(params)
  for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(grad_ref)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
