"""C-ViViT: layouts (square, rectangular, images), true causality, and the reference's leaking PEG."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen_jax.models.cvivit import CViViT


def _model(**kw):
  base = dict(dim=16, image_size=(8, 12), patch_size=4, temporal_patch_size=2, spatial_depth=1,
              temporal_depth=2, heads=2, dim_head=8, quantizer="fsq", fsq_levels=(5, 5, 4))
  return CViViT(**{**base, **kw})


def _video(t=5, seed=0, shape=(8, 12)):
  return jax.random.uniform(jax.random.key(seed), (2, t) + shape + (3,))


@pytest.mark.parametrize("quantizer", ["fsq", "lfq", "vq"])
def test_shapes_rectangular_video_and_image(quantizer):
  model = _model(quantizer=quantizer, codebook_size=64)
  video = _video()
  variables = model.init(jax.random.key(1), video)
  recon, indices, aux = model.apply(variables, video)
  assert recon.shape == video.shape and indices.shape == (2, 3, 2, 3)       # 1 + (5-1)/2 token steps
  assert indices.dtype == jnp.int32 and int(indices.max()) < (100 if quantizer == "fsq" else 64)
  np.testing.assert_allclose(model.apply(variables, indices, method=CViViT.decode_indices), recon, atol=1e-5)
  image = video[:, 0]
  recon_img, idx_img, _ = model.apply(variables, image)
  assert recon_img.shape == (2, 1, 8, 12, 3) and idx_img.shape == (2, 1, 2, 3)
  assert {"loss", "usage", "perplexity"} <= set(aux)
  with pytest.raises(ValueError, match="temporal_patch_size"):
    model.apply(variables, _video(t=4))
  with pytest.raises(ValueError, match="expected video"):
    model.apply(variables, _video(shape=(8, 8)))


def _tokens_and_frames(model, variables, video):
  z = model.apply(variables, video, method=CViViT.encode_continuous)
  recon, indices, _ = model.apply(variables, video)
  return z, recon


@pytest.mark.parametrize("reference_compat", [False, True])
def test_earlier_tokens_do_not_see_later_frames(reference_compat):
  model = _model(reference_compat=reference_compat)
  video = _video(t=7)
  variables = model.init(jax.random.key(1), video)
  changed = video.at[:, 5:].set(jax.random.uniform(jax.random.key(9), video[:, 5:].shape))   # token step 3
  z1, r1 = _tokens_and_frames(model, variables, video)
  z2, r2 = _tokens_and_frames(model, variables, changed)
  early = float(jnp.abs(z1[:, :3] - z2[:, :3]).max())
  assert float(jnp.abs(z1[:, 3] - z2[:, 3]).max()) > 1e-3          # the changed step does change
  if reference_compat:
    assert early > 1e-3        # the reference's PEG pads one future frame: step 2 sees step 3
  else:
    assert early == 0.0
    np.testing.assert_array_equal(r1[:, :5], r2[:, :5])             # decoded frames of steps 0..2 too


def test_depthwise_conv_equals_grouped_convolution():
  from vidgen_jax.layers.transformer import depthwise_conv3
  x = jax.random.normal(jax.random.key(0), (2, 6, 5, 7, 4))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  ref = jax.lax.conv_general_dilated(x, kernel[:, :, :, None], (1, 1, 1), "VALID",
                                     dimension_numbers=("NTHWC", "THWIO", "NTHWC"), feature_group_count=4)
  np.testing.assert_allclose(depthwise_conv3(x, kernel), ref, rtol=1e-5, atol=1e-5)
