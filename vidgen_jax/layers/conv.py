"""Space-only convolutions for channels-last video (..., H, W, C), written as 2D convs.

A (1, kh, kw) Conv3d touches no other frame, so every leading axis (batch, frames, ...) is folded into the
batch of one 2D convolution. On XLA:CPU that is ~2.5x faster than the equivalent 3D conv (research/deps.md
section 7); on GPU/TPU it is the same computation.

Kernels are stored (kh, kw, in, out), so a torch Conv3d weight (out, in, 1, kh, kw) maps by
`w[:, :, 0].transpose(2, 3, 1, 0)` and a torch ConvTranspose3d weight (in, out, 1, kh, kw) maps by
`w[:, :, 0].transpose(2, 3, 0, 1)` (no flip: `SpaceUpsample` flips the kernel itself). A 1x1x1 conv is a
`PointwiseConv` with kernel (in, out) = `w[:, :, 0, 0, 0].T`.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

_CONV_AXES = ("conv_h", "conv_w", "conv_in", "conv_out")
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def _pair(value):
  return (value, value) if isinstance(value, int) else tuple(value)


def _explicit_padding(padding, kernel_size):
  """int p or (ph, pw) -> ((ph, ph), (pw, pw)); None -> kernel // 2 per side ('same' for odd kernels)."""
  if padding is None:
    return tuple((k // 2, k // 2) for k in kernel_size)
  return tuple((p, p) for p in _pair(padding))


def _fold_frames(x):
  """(..., H, W, C) -> ((N, H, W, C), leading shape)."""
  if x.ndim < 4:
    raise ValueError(f"expected (..., H, W, C) with at least one leading axis, got shape {x.shape}")
  return x.reshape((-1,) + x.shape[-3:]), x.shape[:-3]


def _gathered_over_inputs(kernel):
  """A conv kernel (..., in, out) with its input-channel shards gathered (as FSDP gathers every weight before
  use), output channels left sharded. Works around an XLA SPMD bug (jax 0.10.2, Shardy and GSPMD alike): with
  the batch over two mesh axes (data x fsdp) and kernels split over inputs and outputs (fsdp x tensor), a
  chain of convs gets a wrong gradient w.r.t. its input for half the batch (two stride-2 convs suffice;
  tests/test_parallel.py). The frame discriminator's gradient penalty is such a gradient.

  Only when output channels are split (tensor parallelism); otherwise the program is left as XLA makes it."""
  if nn.logical_to_mesh_axes(("conv_out",))[0] is None:
    return kernel
  return nn.with_logical_constraint(kernel, (None,) * (kernel.ndim - 2) + (None, "conv_out"))


class _SpaceKernel(nn.Module):
  """Shared parameter creation for the 2D convs: kernel (kh, kw, in, out) and bias (out,)."""
  features: int
  kernel_size: Sequence[int] = (3, 3)
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  def _params(self, in_features):
    kh, kw = _pair(self.kernel_size)
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(self.kernel_init, _CONV_AXES),
        (kh, kw, in_features, self.features), self.param_dtype)
    bias = None
    if self.use_bias:
      bias = self.param(
          "bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
          (self.features,), self.param_dtype)
    return _gathered_over_inputs(kernel), bias

  def _finish(self, y, bias, lead):
    if bias is not None:
      y = y + bias.astype(self.dtype)
    return y.reshape(lead + y.shape[1:])


class SpaceConv(_SpaceKernel):
  """A (kh, kw) conv applied to every frame: torch Conv3d with kernel (1, kh, kw)."""
  strides: Sequence[int] = (1, 1)
  padding: int | Sequence[int] | None = None

  @nn.compact
  def __call__(self, x):
    folded, lead = _fold_frames(x)
    kernel, bias = self._params(folded.shape[-1])
    y = lax.conv_general_dilated(
        folded.astype(self.dtype), kernel.astype(self.dtype), window_strides=_pair(self.strides),
        padding=_explicit_padding(self.padding, kernel.shape[:2]), dimension_numbers=_DIMENSION_NUMBERS)
    return self._finish(y, bias, lead)


class SpaceDownsample(SpaceConv):
  """Halves H and W: torch Conv3d(dim, dim, (1, 4, 4), stride (1, 2, 2), padding (0, 1, 1))."""
  kernel_size: Sequence[int] = (4, 4)
  strides: Sequence[int] = (2, 2)
  padding: int | Sequence[int] | None = 1


class SpaceUpsample(_SpaceKernel):
  """torch ConvTranspose3d with kernel (1, k, k), stride (1, s, s), padding (0, p, p), output_padding 0.

  Output side (n - 1) * s - 2p + k, exactly 2n for the default k=4, s=2, p=1. Computed as the gradient
  form of a conv: dilate the input by s, pad by k - 1 - p and correlate with the spatially flipped kernel.
  The stored kernel is the unflipped torch kernel, laid out (kh, kw, in, out).
  """
  kernel_size: Sequence[int] = (4, 4)
  strides: Sequence[int] = (2, 2)
  padding: int | Sequence[int] = 1

  @nn.compact
  def __call__(self, x):
    folded, lead = _fold_frames(x)
    kernel, bias = self._params(folded.shape[-1])
    kh, kw = kernel.shape[:2]
    ph, pw = _pair(self.padding)
    if ph > kh - 1 or pw > kw - 1:
      raise ValueError(f"transposed-conv padding {self.padding} must be < kernel size {(kh, kw)}")
    y = lax.conv_general_dilated(
        folded.astype(self.dtype), kernel[::-1, ::-1].astype(self.dtype), window_strides=(1, 1),
        padding=((kh - 1 - ph, kh - 1 - ph), (kw - 1 - pw, kw - 1 - pw)), lhs_dilation=_pair(self.strides),
        dimension_numbers=_DIMENSION_NUMBERS)
    return self._finish(y, bias, lead)


def _add_bias(module, y):
  """y + a zero-initialised (features,) `bias` param of `module` when module.use_bias."""
  if not module.use_bias:
    return y
  bias = module.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
                      (module.features,), module.param_dtype)
  return y + bias.astype(module.dtype)


class PointwiseConv(nn.Module):
  """A 1x1(x1) conv over the channel axis: kernel (in, out), bias (out,)."""
  features: int
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(self.kernel_init, ("conv_in", "conv_out")),
        (x.shape[-1], self.features), self.param_dtype)
    kernel = _gathered_over_inputs(kernel)
    y = jnp.einsum("...i,io->...o", x.astype(self.dtype), kernel.astype(self.dtype))
    return _add_bias(self, y)


class TemporalConv(nn.Module):
  """A 1-D conv over the frame axis of (B, T, H, W, C) at every pixel: torch Conv3d with kernel (k, 1, 1).

  'Same' zero padding in time, so frame t sees frames t - k//2 .. t + k//2 and T is kept. Written as k
  time-shifted matmuls (no conv op: XLA:CPU runs matmuls faster than convs). The kernel is (k, in, out);
  `kernel_init` defaults to zeros, so `x + TemporalConv(...)(x)` starts as the identity (pseudo-3D
  inflation, Make-A-Video section 3.2).
  """
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x):
    if x.ndim != 5:
      raise ValueError(f"TemporalConv expects (B, T, H, W, C), got shape {x.shape}")
    k = self.kernel_size
    if k < 1 or k % 2 != 1:
      raise ValueError(f"kernel_size must be odd and positive, got {k}")
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, ("conv_t", "conv_in", "conv_out")),
                        (k, x.shape[-1], self.features), self.param_dtype).astype(self.dtype)
    frames, half = x.shape[1], k // 2
    xp = jnp.pad(x.astype(self.dtype), ((0, 0), (half, half), (0, 0), (0, 0), (0, 0)))
    y = sum(jnp.einsum("bthwi,io->bthwo", xp[:, i:i + frames], kernel[i]) for i in range(k))
    return _add_bias(self, y)
