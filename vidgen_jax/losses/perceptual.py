"""Perceptual loss of tokenizer training: a frozen VGG16 feature network in Flax and its local-file loader.

* `VGG16Features`: torchvision's `vgg16().features` (13 3x3 convs with ReLU, 5 max pools), channels-last,
  run up to the deepest requested tap. Each conv is named after its torchvision index (`features_0`, ...).
* Taps: by default LPIPS's (Zhang et al. 2018) relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 = torchvision
  indices (3, 8, 15, 22, 29), as in VQGAN and MAGVIT. The reference phenaki-pytorch instead compares the
  fc7 output of the whole classifier (which needs `classifier.*` weights and a 224-trained global feature)
  with a plain MSE; the multi-layer, channel-normalised distance keeps spatial detail at several scales.
* `perceptual_distance` / `perceptual_loss`: images (..., H, W, C) in [0, 1], C = 3 (or 1: repeated to RGB,
  where the reference crashes), are ImageNet-normalised ((x − mean)/std with torchvision's mean
  (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), the statistics the pretrained weights expect; the
  reference skips this). At each tap the features are L2-normalised over channels, and the distance is
  mean over positions of sum over channels of the squared difference (LPIPS with uniform layer weights),
  averaged over the taps. Each tap's term lies in [0, 4]. min(H, W) must be >= 16 for relu5_3.
* Frozen: the VGG variables are an input wrapped in `jax.lax.stop_gradient`, never a submodule of the
  tokenizer. Keep them out of the train state, the optimizer and checkpoints; pass them to the jitted step
  as an argument (or close over them). The reference trains its VGG by mistake (caveat 2.10-f).
* Weights come from a LOCAL file only (nothing is downloaded): `load_vgg16_params(path)` reads .npz or
  .safetensors with torchvision's `features.{i}.weight` (OIHW) / `features.{i}.bias` keys and converts the
  kernels to HWIO. `save_random_vgg16(path)` writes random weights in that layout (tests, path checks).
"""
import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vidgen_jax.layers.conv import SpaceConv
from vidgen_jax.layers.transformer import l2norm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's VGG16 configuration "D": widths of the 3x3 convs, "M" = 2x2 max pool.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _features_layout(cfg=_VGG16_CFG) -> tuple:
  """torchvision `features` as a tuple indexed like it: ("conv", in, out), ("relu",) or ("pool",)."""
  layers, channels = [], 3
  for item in cfg:
    if item == "M":
      layers.append(("pool",))
    else:
      layers += [("conv", channels, item), ("relu",)]
      channels = item
  return tuple(layers)


VGG16_FEATURES = _features_layout()
LPIPS_TAPS = (3, 8, 15, 22, 29)   # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


def _check_taps(taps):
  taps = tuple(taps)
  if not taps or list(taps) != sorted(set(taps)) or taps[0] < 0 or taps[-1] >= len(VGG16_FEATURES):
    raise ValueError(f"taps must be increasing torchvision feature indices in [0, {len(VGG16_FEATURES)}), "
                     f"got {taps}")
  return taps


def min_image_side(taps=LPIPS_TAPS) -> int:
  """Smallest min(H, W) that leaves at least one position at the deepest tap: 2^(pools before it)."""
  taps = _check_taps(taps)
  return 2 ** sum(layer[0] == "pool" for layer in VGG16_FEATURES[:taps[-1]])


class VGG16Features(nn.Module):
  """(N, H, W, 3) ImageNet-normalised images -> list of the feature maps at `taps` (torchvision indices)."""
  taps: tuple = LPIPS_TAPS
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    taps = _check_taps(self.taps)
    feats = []
    for i, layer in enumerate(VGG16_FEATURES[:taps[-1] + 1]):
      if layer[0] == "conv":
        x = SpaceConv(layer[2], (3, 3), padding=1, dtype=self.dtype, name=f"features_{i}")(x)
      elif layer[0] == "relu":
        x = nn.relu(x)
      else:
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")   # torch's floor mode
      if i in taps:
        feats.append(x)
    return feats


def imagenet_normalize(images):
  """(..., H, W, C) in [0, 1] with C in {1, 3} -> RGB (x − mean) / std with torchvision's ImageNet stats."""
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  if images.shape[-1] != 3:
    raise ValueError(f"VGG16 takes RGB (or grayscale) images (..., H, W, 3), got shape {images.shape}")
  mean, std = jnp.asarray(IMAGENET_MEAN, images.dtype), jnp.asarray(IMAGENET_STD, images.dtype)
  return (images - mean) / std


def perceptual_distance(vgg_params, x, y, *, taps=LPIPS_TAPS, dtype=jnp.float32):
  """Per-image distance (...) between images x and y (..., H, W, C) in [0, 1]; see the module docstring.

  vgg_params: the variables of `VGG16Features` ({'params': {'features_0': ...}}), e.g. from
  `load_vgg16_params`; they are stop-gradiented here. x and y run through VGG in one batch.
  """
  if x.shape != y.shape:
    raise ValueError(f"x and y must have the same shape, got {x.shape} and {y.shape}")
  if x.ndim < 4:
    raise ValueError(f"images must be (..., H, W, C) with at least one leading axis, got {x.shape}")
  need = min_image_side(taps)
  if min(x.shape[-3:-1]) < need:
    raise ValueError(f"images of {x.shape[-3]}x{x.shape[-2]} are too small for VGG16 taps {tuple(taps)}: "
                     f"min(H, W) must be >= {need}")
  lead = x.shape[:-3]
  both = jnp.concatenate([x.reshape((-1,) + x.shape[-3:]), y.reshape((-1,) + y.shape[-3:])])
  feats = VGG16Features(tuple(taps), dtype=dtype).apply(jax.lax.stop_gradient(vgg_params),
                                                        imagenet_normalize(both.astype(dtype)))
  per_tap = []
  for f in feats:
    fx, fy = jnp.split(l2norm(f.astype(jnp.float32)), 2)
    per_tap.append(jnp.mean(jnp.sum(jnp.square(fx - fy), axis=-1), axis=(1, 2)))
  return jnp.mean(jnp.stack(per_tap), axis=0).reshape(lead)


def perceptual_loss(vgg_params, x, y, *, taps=LPIPS_TAPS, dtype=jnp.float32):
  """Mean of `perceptual_distance` over all images: a scalar, differentiable in x and y, not in vgg_params."""
  return jnp.mean(perceptual_distance(vgg_params, x, y, taps=taps, dtype=dtype))


# ---- weights: torchvision layout <-> Flax variables -----------------------------------------------------

def vgg16_torch_shapes() -> dict:
  """{'features.{i}.weight': (out, in, 3, 3), 'features.{i}.bias': (out,)} for the 13 convs of VGG16."""
  shapes = {}
  for i, layer in enumerate(VGG16_FEATURES):
    if layer[0] == "conv":
      shapes[f"features.{i}.weight"] = (layer[2], layer[1], 3, 3)
      shapes[f"features.{i}.bias"] = (layer[2],)
  return shapes


def _natural(key):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def vgg16_params_from_state_dict(state_dict) -> dict:
  """torchvision VGG16 arrays by key -> Flax variables {'params': {'features_{i}': {'kernel', 'bias'}}}.

  Kernels go OIHW -> HWIO, everything to float32. Keys outside `features.` (e.g. `classifier.*`) are
  ignored; a missing, wrongly shaped or unexpected `features.*` entry (e.g. a VGG16-BN file) is an error.
  """
  expected = vgg16_torch_shapes()
  problems = []
  missing = sorted(set(expected) - set(state_dict), key=_natural)
  if missing:
    problems.append(f"missing keys {missing}")
  unexpected = sorted((k for k in state_dict if k.startswith("features.") and k not in expected), key=_natural)
  if unexpected:
    problems.append(f"unexpected keys {unexpected} (VGG16 with batch norm is not supported)")
  for key, shape in expected.items():
    if key in state_dict and tuple(np.shape(state_dict[key])) != shape:
      problems.append(f"{key} has shape {tuple(np.shape(state_dict[key]))}, VGG16 needs {shape} "
                      "(torchvision OIHW layout)")
  if problems:
    raise ValueError("not a torchvision VGG16 `features` state dict: " + "; ".join(problems))
  params = {}
  for i, layer in enumerate(VGG16_FEATURES):
    if layer[0] == "conv":
      weight = np.asarray(state_dict[f"features.{i}.weight"], np.float32)
      params[f"features_{i}"] = {"kernel": jnp.asarray(weight.transpose(2, 3, 1, 0)),
                                 "bias": jnp.asarray(np.asarray(state_dict[f"features.{i}.bias"], np.float32))}
  return {"params": params}


_HOW_TO = ("make one where torch is available: sd = torchvision.models.vgg16(weights='IMAGENET1K_V1')"
           ".state_dict(); numpy.savez(path, **{k: v.numpy() for k, v in sd.items() if k.startswith('features.')})")


_SUFFIXES = (".npz", ".safetensors")


def _check_suffix(path: Path):
  if path.suffix not in _SUFFIXES:
    raise ValueError(f"VGG16 weights must be a .npz or .safetensors file, got {path}")


def _read_arrays(path: Path) -> dict:
  if path.suffix == ".npz":
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  from safetensors.numpy import load_file
  return load_file(str(path))


def load_vgg16_params(path) -> dict:
  """Reads VGG16 weights from a local .npz or .safetensors file (torchvision key names) -> Flax variables.

  Raises FileNotFoundError if the file is absent and ValueError if it is not a VGG16 `features` state dict.
  """
  path = Path(path)
  _check_suffix(path)
  if not path.is_file():
    raise FileNotFoundError(f"VGG16 weights file {path} not found (nothing is downloaded); {_HOW_TO}")
  try:
    arrays = _read_arrays(path)
  except Exception as e:   # numpy and safetensors raise various types for a corrupt file
    raise ValueError(f"could not read VGG16 weights from {path}: {e}") from e
  try:
    return vgg16_params_from_state_dict(arrays)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None


def random_vgg16_state_dict(seed: int = 0) -> dict:
  """Random VGG16 `features` arrays in torchvision's layout: He-normal kernels (OIHW), zero biases."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, shape in vgg16_torch_shapes().items():
    if key.endswith(".weight"):
      fan_in = shape[1] * shape[2] * shape[3]
      out[key] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    else:
      out[key] = np.zeros(shape, np.float32)
  return out


def save_random_vgg16(path, *, seed: int = 0) -> Path:
  """Writes `random_vgg16_state_dict(seed)` to path (.npz or .safetensors, ~59 MB) for tests; returns it."""
  path = Path(path)
  _check_suffix(path)
  arrays = random_vgg16_state_dict(seed)
  if path.suffix == ".npz":
    np.savez(path, **arrays)
  else:
    from safetensors.numpy import save_file
    save_file(arrays, str(path))
  return path
