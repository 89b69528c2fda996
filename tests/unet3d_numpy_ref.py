"""A float64 numpy transcription of video-diffusion-pytorch 0.7.0 Unet3D.forward (torch layout), for parity
tests of the Flax Unet3D without torch installed."""
import math

import numpy as np

from vidgen_jax.models import unet3d



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
