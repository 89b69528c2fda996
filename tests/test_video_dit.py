"""VideoDiT (model.kind='dit'): identity start, absolute positions, conditioning paths, masks, config."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import HashTextEncoder
from tests.unet3d_setup import abstract_params
from vidgen_jax import configs
from vidgen_jax.data import pipeline
from vidgen_jax.models import video_dit
from vidgen_jax.models.video_dit import VideoDiT
from vidgen_jax.train import setup, validation

B, T, H, W, C, DC, L = 2, 4, 4, 4, 6, 10, 5


def _model(**kw):
  return VideoDiT(dim=24, depth=2, heads=2, dim_head=8, channels=C, cond_dim=DC, text_token_dim=DC, **kw)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  return dict(x=rng.standard_normal((B, T, H, W, C)).astype(np.float32),
              time=np.array([3, 700], np.int32),
              cond=rng.standard_normal((B, DC)).astype(np.float32),
              tokens=rng.standard_normal((B, L, DC)).astype(np.float32),
              mask=np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool))


def _call(model, params, inp, **kw):
  kw.setdefault("text_tokens", inp["tokens"])
  kw.setdefault("text_mask", inp["mask"])
  return model.apply(params, inp["x"], kw.pop("time", inp["time"]), kw.pop("cond", inp["cond"]), **kw)


def _perturbed(model, inp, seed=1):
  """Initialised params with every leaf replaced by noise (the zero-initialised gates and outputs too)."""
  params = {"params": abstract_params(model, inp["x"], inp["time"], inp["cond"], text_tokens=inp["tokens"],
                                      text_mask=inp["mask"])}
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [0.3 * rng.standard_normal(l.shape).astype(np.float32) for l in leaves])


def test_starts_at_zero_output_with_the_input_shape():
  model, inp = _model(), _inputs()
  out = jax.jit(lambda key: _call(model, model.init(key, inp["x"], inp["time"], inp["cond"],
                                                   text_tokens=inp["tokens"], text_mask=inp["mask"]), inp))(
      jax.random.key(0))
  assert out.shape == inp["x"].shape and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, 0.0)


def test_sincos_positions_distinguish_every_token():
  emb = np.asarray(video_dit.sincos_3d(8, 4, 4, 48)).reshape(-1, 48)
  dist = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
  assert emb.shape == (128, 48) and (dist + np.eye(128) > 1e-3).all()


def test_identical_frames_get_different_outputs():
  """Absolute frame positions: from the same input in every frame (e.g. pure noise drawn once) the model can
  still put an object in a different place in each frame, which relative positions alone cannot."""
  model, inp = _model(), _inputs()
  params = _perturbed(model, inp)
  inp["x"] = np.repeat(inp["x"][:, :1], T, axis=1)
  out = np.asarray(_call(model, params, inp))
  assert np.abs(out[:, 1:] - out[:, :1]).max() > 1e-2


def test_equal_per_frame_times_equal_the_shared_time():
  model, inp = _model(), _inputs()
  params = _perturbed(model, inp)
  shared = _call(model, params, inp)
  per_frame = _call(model, params, inp, time=np.repeat(inp["time"][:, None], T, axis=1))
  np.testing.assert_allclose(per_frame, shared, atol=1e-5)
  other = _call(model, params, inp, time=np.array([[3, 3, 900, 900], [700] * 4], np.int32))
  assert np.abs(np.asarray(other)[0] - np.asarray(shared)[0]).max() > 1e-3
  np.testing.assert_allclose(other[1], shared[1], atol=1e-5)


def test_null_condition_ignores_text_and_cond():
  model, inp = _model(), _inputs()
  params = _perturbed(model, inp)
  null = np.array([True, False])
  a = _call(model, params, inp, null_cond=null)
  other = _inputs(seed=5)
  b = _call(model, params, inp, null_cond=null, cond=other["cond"], text_tokens=other["tokens"])
  np.testing.assert_allclose(a[0], b[0], atol=1e-6)
  assert np.abs(np.asarray(a[1]) - np.asarray(b[1])).max() > 1e-3
  masked = inp["tokens"].copy()
  masked[0, 3:] = 100.0                                   # masked-out tokens of sample 0 must not matter
  np.testing.assert_allclose(_call(model, params, inp, text_tokens=masked)[0], _call(model, params, inp)[0],
                             atol=1e-5)


def test_frame_groups_keep_images_to_themselves():
  """Joint image+video training: frames 0-1 are a video (group 0), frames 2 and 3 two separate images."""
  model, inp = _model(), _inputs()
  params = _perturbed(model, inp)
  groups = np.array([[0, 0, 1, 2]] * B, np.int32)
  per_frame = dict(cond=np.repeat(inp["cond"][:, None], T, 1), null_cond=np.zeros((B, T), bool),
                   text_tokens=np.repeat(inp["tokens"][:, None], T, 1), text_mask=np.repeat(inp["mask"][:, None], T, 1))
  base = np.asarray(_call(model, params, inp, frame_groups=groups, **per_frame))
  changed = dict(inp, x=inp["x"].copy())
  changed["x"][:, 2] += 1.0
  out = np.asarray(_call(model, params, changed, frame_groups=groups, **per_frame))
  np.testing.assert_allclose(out[:, [0, 1, 3]], base[:, [0, 1, 3]], atol=1e-5)
  assert np.abs(out[:, 2] - base[:, 2]).max() > 1e-3
  changed = dict(inp, x=inp["x"].copy())
  changed["x"][:, 0] += 1.0
  out = np.asarray(_call(model, params, changed, frame_groups=groups, **per_frame))
  assert np.abs(out[:, 1] - base[:, 1]).max() > 1e-3        # video frames see each other
  np.testing.assert_allclose(out[:, 2:], base[:, 2:], atol=1e-5)
  # per-frame text: frame 3's text reaches frame 3 only
  tokens = per_frame["text_tokens"].copy()
  tokens[:, 3] = np.random.default_rng(9).standard_normal(tokens[:, 3].shape)
  out = np.asarray(_call(model, params, inp, frame_groups=groups, **dict(per_frame, text_tokens=tokens)))
  np.testing.assert_allclose(out[:, :3], base[:, :3], atol=1e-5)
  assert np.abs(out[:, 3] - base[:, 3]).max() > 1e-3


def test_bad_inputs_are_refused():
  model, inp = _model(), _inputs()
  params = _perturbed(model, inp)
  with pytest.raises(ValueError, match="time must be"):
    _call(model, params, inp, time=np.zeros((B, T + 1), np.int32))
  with pytest.raises(ValueError, match="text_tokens"):
    _call(model, params, inp, text_tokens=None)
  with pytest.raises(ValueError, match="depth"):
    VideoDiT(depth=0)


def test_dit_config_validates_and_refuses_unet_options():
  c = configs.load_config_file("configs/vdm_shapes.py:variant=dit")
  assert validation.vdm_problems(c, 1) == []
  c.model.frame_cond_mlp, c.model.space_time_attention, c.model.depth = 64, "mid", 0
  c.model.input_skip = True
  problems = "\n".join(validation.vdm_problems(c, 1))
  assert "model.input_skip=True is a U-Net option" in problems
  assert "model.frame_cond_mlp=64 is a U-Net option" in problems
  assert "model.space_time_attention='mid' is a U-Net option" in problems
  assert "model.depth=0" in problems


def test_sharded_dit_step_equals_single_device():
  """The whole train step of a tiny tubelet DiT, fsdp + tensor over 8 devices against one device."""
  def run(devices, mesh=None):
    c = configs.load_config_file("configs/vdm_shapes.py:variant=dit,runlocal=True")
    if mesh:
      c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
      c.sharding.preset = "fsdp_tensor"
    enc = HashTextEncoder()
    r = setup.build_run(c, text_encoder=enc, devices=devices)
    state, step = r.init_state(0), r.jit_train_step()
    batch = pipeline.attach_text(next(iter(pipeline.make_dataset(pipeline.make_source(c.data),
                                                                 c.train.batch_size, 0))), enc)
    with r.context():
      for _ in range(2):
        state, metrics = step(state, pipeline.to_global(batch, r.batch_shardings()))
    return jax.device_get(state), jax.device_get(metrics)

  one, m1 = run(jax.devices()[:1])
  eight, m8 = run(jax.devices(), (2, 2, 2))
  assert np.isfinite(m1["loss"])
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(eight.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
