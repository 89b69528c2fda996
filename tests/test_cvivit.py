"""C-ViViT and its transformer blocks: layouts (square, rectangular, images), patch order, true causality, the
reference's leaking PEG, attention masks / null key-values / ALiBi, position bias, gradients, VQ state."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen_jax.layers import position
from vidgen_jax.layers import transformer as tf
from vidgen_jax.layers.transformer import l2norm
from vidgen_jax.models.cvivit import CViViT, patchify, unpatchify


def _model(**kw):
  base = dict(dim=16, image_size=(8, 12), patch_size=4, temporal_patch_size=2, spatial_depth=1,
              temporal_depth=1, heads=2, dim_head=8, quantizer="fsq", fsq_levels=(5, 5, 4), codebook_size=64)
  return CViViT(**{**base, **kw})


def _video(t=5, seed=0, shape=(8, 12), b=2):
  return jax.random.uniform(jax.random.key(seed), (b, t) + shape + (3,))


def _random_variables(model, key, video):
  """Variables of `model` with random values drawn on the host (compiling `init` costs seconds here): gains
  near 1, other weights ~ N(0, 0.3^2); a VQ codebook on the unit sphere with its EMA statistics."""
  abstract = nn.meta.unbox(jax.eval_shape(model.init, key, video))
  rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2 ** 30)))

  def fill(path, leaf):
    name = path[-1].key
    if name in ("embed", "embed_avg"):
      return np.asarray(l2norm(jnp.asarray(rng.standard_normal(leaf.shape, np.float32))))
    if name in ("cluster_size", "unused_steps"):
      return np.ones(leaf.shape, leaf.dtype) if name == "cluster_size" else np.zeros(leaf.shape, leaf.dtype)
    gain = name in ("scale", "gamma", "q_scale", "k_scale")
    return (gain + 0.3 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

  variables = jax.tree_util.tree_map_with_path(fill, abstract)
  if "quantizer_stats" in variables:                                        # embed_avg starts at embed
    variables["quantizer_stats"]["vq"]["embed_avg"] = variables["quantizer_stats"]["vq"]["embed"]
  return jax.tree.map(jnp.asarray, variables)


def _fns(model):
  """Functions of `model`, cached per configuration (compilation dominates these tests): init (host-random
  variables); jitted call -> (recon, indices, aux, decode_indices(indices)), enc -> (pre-quantization tokens,
  quantized, indices), dec (quantized -> video), dec_idx (indices -> video)."""
  return _jitted(tuple(sorted((f, getattr(model, f)) for f in model.__dataclass_fields__
                              if f not in ("parent", "name"))))


@functools.lru_cache(maxsize=None)
def _jitted(fields):
  model = CViViT(**dict(fields))

  def call(v, x):
    recon, indices, aux = model.apply(v, x)
    return recon, indices, aux, model.apply(v, indices, method=CViViT.decode_indices)

  def enc(v, x):
    return (model.apply(v, x, method=CViViT.encode_continuous),) + model.apply(v, x, method=CViViT.encode)[:2]

  return dict(init=functools.partial(_random_variables, model), call=jax.jit(call), enc=jax.jit(enc),
              dec=jax.jit(lambda v, q: model.apply(v, q, method=CViViT.decode)),
              dec_idx=jax.jit(lambda v, i: model.apply(v, i, method=CViViT.decode_indices)))


def test_patchify_is_torchs_c_pt_p1_p2_order_and_round_trips():
  video = jnp.arange(2 * 5 * 8 * 12 * 3, dtype=jnp.float32).reshape(2, 5, 8, 12, 3)
  first, rest = patchify(video, (4, 6), 2)
  assert first.shape == (2, 1, 2, 2, 3 * 4 * 6) and rest.shape == (2, 2, 2, 2, 3 * 2 * 4 * 6)
  # token (b=1, step s=2, row 1, col 0) covers frames 3..4, rows 4..7, cols 0..5; vector order (c, pt, p1, p2)
  block = video[1, 3:5, 4:8, 0:6, :]                                  # (pt, p1, p2, c)
  np.testing.assert_array_equal(rest[1, 1, 1, 0], jnp.transpose(block, (3, 0, 1, 2)).reshape(-1))
  np.testing.assert_array_equal(first[0, 0, 0, 1], jnp.transpose(video[0, 0, 0:4, 6:12], (2, 0, 1)).reshape(-1))
  np.testing.assert_array_equal(unpatchify(first, rest, (4, 6), 2, 3), video)


@pytest.mark.parametrize("quantizer", ["fsq", "lfq", "vq"])
def test_shapes_rectangular_video_and_decode_from_indices(quantizer):
  model = _model(quantizer=quantizer)
  fns, video = _fns(model), _video()
  variables = fns["init"](jax.random.key(1), video)
  recon, indices, aux, from_indices = fns["call"](variables, video)
  assert recon.shape == video.shape and indices.shape == (2, 3, 2, 3)       # 1 + (5 - 1) / 2 token steps
  assert indices.dtype == jnp.int32 and 0 <= int(indices.min())
  assert int(indices.max()) < (100 if quantizer == "fsq" else 64)                # fsq: 5 * 5 * 4 codes
  assert {"loss", "usage", "perplexity"} <= set(aux) and np.isfinite(float(aux["loss"]))
  np.testing.assert_allclose(from_indices, recon, atol=1e-5)
  if quantizer == "fsq":
    np.testing.assert_allclose(fns["dec_idx"](variables, indices.reshape(2, -1)), recon, atol=1e-5)  # (B, N)
  assert model.token_shape(9) == (5, 2, 3) and model.num_frames(5) == 9
  with pytest.raises(ValueError, match="temporal_patch_size"):
    model.apply(variables, _video(t=4))
  with pytest.raises(ValueError, match="expected video"):
    model.apply(variables, _video(shape=(8, 8)))


def test_bfloat16_compute_stays_close_to_float32_and_keeps_float32_interfaces():
  video = _video()
  f32, bf16 = _fns(_model()), _fns(_model(dtype=jnp.bfloat16))
  variables = f32["init"](jax.random.key(1), video)                           # the same float32 params serve both
  (z, q, idx), (zb, qb, idxb) = f32["enc"](variables, video), bf16["enc"](variables, video)
  recon, recon_b = f32["dec"](variables, q), bf16["dec"](variables, q)
  assert zb.dtype == qb.dtype == recon_b.dtype == jnp.float32                # tokens, quantizer, video in float32
  rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
  assert rel(zb, z) < 0.05 and rel(recon_b, recon) < 0.05, (rel(zb, z), rel(recon_b, recon))
  assert rel(zb, z) > 0 and float(jnp.mean(idxb == idx)) > 0.5               # bf16 really ran; codes mostly agree


def _perturb_last_step(video):
  return video.at[:, -2:].set(jax.random.uniform(jax.random.key(9), video[:, -2:].shape))


_SQUARE = dict(image_size=8, patch_size=(2, 4))                             # square frames, oblong patches


def test_causal_square_frames_and_images():
  model = _model(**_SQUARE)
  fns, video = _fns(model), _video(t=7, shape=(8, 8))                      # 4 token steps of 4 x 2 tokens
  variables = fns["init"](jax.random.key(1), video)
  assert model.patch_grid == (4, 2)
  changed = _perturb_last_step(video)                                       # frames 5, 6 = token step 3
  (z1, q1, i1), (z2, q2, i2) = fns["enc"](variables, video), fns["enc"](variables, changed)
  assert i1.shape == (2, 4, 4, 2) and float(jnp.abs(z1[:, 3] - z2[:, 3]).max()) > 1e-3   # step 3 changes
  np.testing.assert_array_equal(z1[:, :3], z2[:, :3])                       # steps 0..2: bit-identical
  np.testing.assert_array_equal(i1[:, :3], i2[:, :3])
  z_img, _, i_img = fns["enc"](variables, video[:, 0])                      # an image = frame 0 alone
  np.testing.assert_allclose(z_img, z1[:, :1], atol=1e-5)
  np.testing.assert_array_equal(i_img, i1[:, :1])
  r1, r2 = fns["dec"](variables, q1), fns["dec"](variables, q2)
  assert r1.shape == video.shape
  np.testing.assert_array_equal(r1[:, :5], r2[:, :5])                       # decoded frames of steps 0..2
  # the decoder alone is causal too: new tokens at step 3 leave frames 0..4 alone
  q = jax.random.normal(jax.random.key(2), q1.shape)
  d1, d2 = fns["dec"](variables, q), fns["dec"](variables, q.at[:, 3].set(0.0))
  np.testing.assert_array_equal(d1[:, :5], d2[:, :5])
  assert float(jnp.abs(d1[:, 5:] - d2[:, 5:]).max()) > 1e-3


def test_reference_compat_reproduces_the_leak_of_phenaki_pytorch():
  """phenaki-pytorch's temporal PEG reshapes (b h w) t as b t h w: later frames reach earlier tokens."""
  model = _model(reference_compat=True, **_SQUARE)
  fns, fixed, video = _fns(model), _fns(_model(**_SQUARE)), _video(t=7, shape=(8, 8))
  variables = fixed["init"](jax.random.key(1), video)                      # the same parameters either way
  z1, z2 = fns["enc"](variables, video)[0], fns["enc"](variables, _perturb_last_step(video))[0]
  assert float(jnp.abs(z1[:, :3] - z2[:, :3]).max()) > 1e-3
  # same parameters, correct layout: no leak (so the leak comes from the layout, not from the weights)
  np.testing.assert_array_equal(fixed["enc"](variables, video)[0][:, :3],
                                fixed["enc"](variables, _perturb_last_step(video))[0][:, :3])


def test_peg_causal_pads_only_the_past():
  x = jax.random.normal(jax.random.key(0), (1, 5, 3, 4, 6))
  later = x.at[:, 3:].add(1.0)
  for causal, leaks in ((True, False), (False, True)):
    peg = tf.PEG(causal=causal)
    params = peg.init(jax.random.key(1), x)
    y1, y2 = peg.apply(params, x), peg.apply(params, later)
    assert y1.shape == x.shape
    assert (float(jnp.abs(y1[:, :3] - y2[:, :3]).max()) > 1e-3) == leaks
    assert float(jnp.abs(y1[:, 3:] - y2[:, 3:]).max()) > 1e-3


def test_depthwise_conv_equals_grouped_convolution():
  from vidgen_jax.layers.transformer import depthwise_conv3
  x = jax.random.normal(jax.random.key(0), (2, 6, 5, 7, 4))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  ref = jax.lax.conv_general_dilated(x, kernel[:, :, :, None], (1, 1, 1), "VALID",
                                     dimension_numbers=("NTHWC", "THWIO", "NTHWC"), feature_group_count=4)
  np.testing.assert_allclose(depthwise_conv3(x, kernel), ref, rtol=1e-5, atol=1e-5)


def test_attention_causal_masks_and_null_kv():
  np.testing.assert_allclose(position.alibi_slopes(8), 2.0 ** -np.arange(1, 9), rtol=1e-6)
  np.testing.assert_allclose(position.alibi_slopes(4), 2.0 ** -(2 * np.arange(1, 5)), rtol=1e-6)
  assert position.alibi_slopes(6).shape == (6,)
  x = jax.random.normal(jax.random.key(0), (2, 6, 8))
  causal = tf.Attention(heads=2, dim_head=4, causal=True)
  p = jax.jit(causal.init)(jax.random.key(1), x)
  run = jax.jit(causal.apply)
  y1, y2 = run(p, x), run(p, x.at[:, 4:].add(3.0))
  np.testing.assert_array_equal(y1[:, :4], y2[:, :4])
  # key mask: masked keys' values do not matter
  full = tf.Attention(heads=2, dim_head=4)
  pf = jax.jit(full.init)(jax.random.key(2), x)
  mask = jnp.array([True] * 4 + [False] * 2)[None].repeat(2, 0)
  run = jax.jit(lambda x: full.apply(pf, x, mask=mask))
  y1, y2 = run(x), run(x.at[:, 4:].add(3.0))
  assert float(jnp.abs(y1 - y2)[:, :4].max()) < 1e-5
  # cross-attention with every context token masked sees only the learned null key/values
  cross = tf.Attention(heads=2, dim_head=4, num_null_kv=2)
  ctx = jax.random.normal(jax.random.key(3), (2, 5, 12))
  pc = jax.jit(cross.init)(jax.random.key(4), x, ctx)
  assert pc["params"]["null_kv"].value.shape == (2, 2, 2, 4)
  none = jnp.zeros((2, 5), bool)
  run = jax.jit(cross.apply)
  y1, y2 = run(pc, x, ctx, mask=none), run(pc, x, 5.0 * ctx[::-1], mask=none)
  np.testing.assert_allclose(y1, y2, atol=1e-5)
  assert np.isfinite(np.asarray(y1)).all()
  assert float(jnp.abs(run(pc, x, ctx, mask=~none) - y1).max()) > 1e-3     # unmasked context is used


def test_continuous_position_bias_depends_only_on_offsets():
  cpb = tf.ContinuousPositionBias(heads=3, dim=8)
  params = cpb.init(jax.random.key(0), 3, 4)
  bias = np.asarray(cpb.apply(params, 3, 4))
  assert bias.shape == (3, 12, 12)
  pos = [(y, x) for y in range(3) for x in range(4)]
  by_offset = {}
  for i, (yi, xi) in enumerate(pos):
    for j, (yj, xj) in enumerate(pos):
      by_offset.setdefault((yi - yj, xi - xj), []).append(bias[:, i, j])
  for values in by_offset.values():
    np.testing.assert_allclose(values, np.broadcast_to(values[0], np.shape(values)), atol=1e-6)
  assert len(by_offset) == 5 * 7 and float(np.ptp(bias)) > 0
  cpb3 = tf.ContinuousPositionBias(heads=2, dim=8)
  assert cpb3.apply(cpb3.init(jax.random.key(1), 2, 2, 3), 2, 2, 3).shape == (2, 12, 12)


def test_transformer_stack_configurations():
  x = jax.random.normal(jax.random.key(0), (2, 12, 16))                    # (B, t*h*w, C), video (2, 3, 2, 2)
  ctx, cmask = jax.random.normal(jax.random.key(1), (2, 4, 10)), jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
  # MaskGIT-style: bidirectional, PEG over the (t, h, w) grid, cross-attention to a masked text context
  bidir = tf.Transformer(2, heads=2, dim_head=8, peg=True, cross_attention=True)
  kw = dict(context=ctx, context_mask=cmask, video_shape=(2, 3, 2, 2))
  p = jax.jit(lambda k, x: bidir.init(k, x, **kw))(jax.random.key(2), x)
  assert {"layer_0_peg", "layer_0_attn", "layer_0_cross_attn", "layer_0_ff", "norm_out"} <= set(p["params"])
  assert jax.jit(lambda p, x: bidir.apply(p, x, **kw))(p, x).shape == x.shape
  with pytest.raises(ValueError, match="video_shape"):
    bidir.apply(p, x, context=ctx)
  # causal, no PEG, no cross-attention
  plain = tf.Transformer(1, heads=2, dim_head=8, causal=True)
  pp = jax.jit(plain.init)(jax.random.key(3), x)
  assert set(pp["params"]) == {"layer_0_attn", "layer_0_ff", "norm_out"}
  run = jax.jit(plain.apply)
  np.testing.assert_array_equal(run(pp, x)[:, :6], run(pp, x.at[:, 6:].set(0.0))[:, :6])
  # dropout from the 'dropout' rng stream only when deterministic=False
  drop = tf.Transformer(1, heads=2, dim_head=8, attn_dropout=0.5, ff_dropout=0.5)
  pd = jax.jit(drop.init)(jax.random.key(4), x)
  noisy = jax.jit(lambda k: drop.apply(pd, x, deterministic=False, rngs={"dropout": k}))
  assert float(jnp.abs(noisy(jax.random.key(5)) - noisy(jax.random.key(6))).max()) > 1e-3
  no_drop = tf.Transformer(1, heads=2, dim_head=8)
  np.testing.assert_allclose(jax.jit(drop.apply)(pd, x), jax.jit(no_drop.apply)(pd, x), atol=1e-6)


def test_reconstruction_gradient_reaches_the_encoder():
  """Straight-through end to end: the reconstruction loss trains the encoder in front of the quantizer."""
  model = _model(quantizer="lfq", temporal_depth=0)     # no PEG: its 27-tap backward is slow to compile
  video = _video(t=3, b=1)
  variables = _fns(model)["init"](jax.random.key(1), video)

  def loss(params):
    recon, _, aux = model.apply({"params": params}, video, train=True)
    return jnp.mean(jnp.square(recon - video)) + aux["loss"]

  grads = jax.jit(jax.grad(loss))(variables["params"])
  for path in (("to_patch_emb_first_frame", "proj", "kernel"), ("vq", "project_in", "kernel"),
               ("enc_spatial_transformer", "layer_0_attn", "to_q", "kernel"), ("to_pixels_first_frame", "kernel")):
    g = grads
    for k in path:
      g = g[k]
    g = np.asarray(getattr(g, "value", g))
    assert np.isfinite(g).all() and float(np.abs(g).max()) > 0, path


def test_vq_codebook_lives_in_quantizer_stats_and_updates_in_training():
  model = _model(quantizer="vq")
  video = _video()
  variables = _fns(model)["init"](jax.random.key(1), video)
  assert set(variables) == {"params", "quantizer_stats"}
  assert variables["quantizer_stats"]["vq"]["embed"].shape == (64, 16)
  train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["quantizer_stats"]))
  (_, indices, _), new = train(variables, video)
  used = np.unique(np.asarray(indices))
  moved = jnp.abs(new["quantizer_stats"]["vq"]["embed"] - variables["quantizer_stats"]["vq"]["embed"]).max(-1)
  assert (np.asarray(moved)[used] > 0).all() and np.asarray(moved)[np.setdiff1d(np.arange(64), used)].max() == 0
