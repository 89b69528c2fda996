"""phenaki-pytorch 0.5.0 checkpoints -> our C-ViViT, MaskGit, TokenCritic and workdirs, checked against torch.

The fixtures in tests/fixtures/phenaki_torch come from launch/make_phenaki_torch_fixtures.py (reference on CPU,
float32, every parameter perturbed); these tests need no torch.
"""
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.helpers import HashTextEncoder
from vidgen_jax import cli, configs
from vidgen_jax.convert import phenaki_torch as pt
from vidgen_jax.models.cvivit import CViViT
from vidgen_jax.models.maskgit import MaskGit, TokenCritic
from vidgen_jax.train import cvivit as cvivit_family
from vidgen_jax.train import setup as setup_lib

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "phenaki_torch"
TOL = 1e-4


def _family_compat() -> bool:
  c = configs.load_config_file(str(pathlib.Path(__file__).parents[1] / "configs" / "cvivit_shapes.py"))
  c.model.reference_compat = True
  return bool(cvivit_family.build_model(c).reference_compat)


MODELS_COMPAT = pt.supports_reference_compat(MaskGit) and pt.supports_reference_compat(TokenCritic)
needs_maskgit_compat = pytest.mark.skipif(
    not MODELS_COMPAT, reason="models/maskgit.py MaskGit/TokenCritic have no reference_compat option yet")
needs_family_compat = pytest.mark.skipif(
    not (MODELS_COMPAT and _family_compat()),
    reason="the cvivit/phenaki families do not pass model.reference_compat to their modules yet")


def _fixture(name):
  return json.loads((FIXTURES / f"{name}.json").read_text()), load_file(str(FIXTURES / f"{name}.io.safetensors"))


def _max(a, b):
  return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


def _cvivit(name, **kw):
  meta, io = _fixture(name)
  ref = meta.get("cvivit")
  module, variables = pt.cvivit_from_torch(FIXTURES / f"{name}.safetensors", image_size=ref["image_size"],
                                           patch_size=ref["patch_size"], **kw)
  return meta, io, module, variables


def _tokenizer_outputs(module, variables, video, image=None):
  """Pre-quantization tokens, ids and reconstruction of a channels-last video (and an image), in one jit."""
  def fn(variables, video, image):
    enc = module.apply(variables, video, method=CViViT.encode_continuous)
    q, ids, _ = module.apply(variables, enc, method=CViViT.quantize)
    out = {"enc": enc, "ids": ids, "recon": module.apply(variables, q, method=CViViT.decode)}
    if image is not None:
      recon, ids, _ = module.apply(variables, image)
      out.update(image_recon=recon[:, 0], image_ids=ids)
    return out
  return jax.device_get(jax.jit(fn)(variables, video, image))


@pytest.mark.parametrize("name", ["cvivit_lfq_rect", "cvivit_vq_cosine"])
def test_cvivit_matches_the_reference(name):
  meta, io, module, variables = _cvivit(name)
  ref = meta["cvivit"]
  inferred = pt.infer_cvivit_kwargs(load_file(str(FIXTURES / f"{name}.safetensors")))
  assert {k: ref.get(k, pt.CVIVIT_ARGS[k]) for k in inferred} == inferred
  video = pt.video_from_torch_layout(io["video"])
  image = pt.video_from_torch_layout(io["image"]) if name == "cvivit_lfq_rect" else None   # the 1-frame path
  out = _tokenizer_outputs(module, variables, video, image)
  errs = {"enc": _max(out["enc"], io["enc"]), "recon": _max(pt.video_to_torch_layout(out["recon"]), io["recon"])}
  np.testing.assert_array_equal(out["ids"], io["ids"])
  if image is not None:
    errs["image_recon"] = _max(pt.video_to_torch_layout(out["image_recon"]), io["image_recon"])
    np.testing.assert_array_equal(out["image_ids"][:, 0], io["image_ids"][:, 0])
  if "ema_embed" in io:   # one training-mode pass: the EMA codebook update of the reference
    _, upd = module.apply(variables, jnp.asarray(out["enc"]), train=True, method=CViViT.quantize,
                          mutable=["quantizer_stats"])
    stats = upd["quantizer_stats"]["vq"]
    for k in ("embed", "embed_avg", "cluster_size"):
      errs[f"ema_{k}"] = _max(stats[k], io[f"ema_{k}"])
  print(f"{name}: max |ours - torch| " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
  assert max(errs.values()) < TOL, errs


def test_the_causal_model_does_not_reproduce_the_leaky_reference():
  meta, io, module, variables = _cvivit("cvivit_vq_cosine")
  causal = module.clone(reference_compat=False)
  enc = jax.jit(lambda v, x: causal.apply(v, x, method=CViViT.encode_continuous))(
      variables, pt.video_from_torch_layout(io["video"]))
  assert _max(enc, io["enc"]) > 0.05


@needs_maskgit_compat
@pytest.mark.parametrize("name", ["maskgit_cond", "critic"])
def test_maskgit_and_critic_match_the_reference(name):
  meta, io = _fixture(name)
  sd = load_file(str(FIXTURES / f"{name}.safetensors"))
  if name == "maskgit_cond":
    inferred, ref = pt.infer_maskgit_kwargs(sd), meta["maskgit"]
    module, variables = pt.maskgit_from_torch(sd)
  else:
    inferred, ref = pt.infer_critic_kwargs(sd), meta["critic"]
    module, variables = pt.critic_from_torch(sd)
  assert {k: inferred[k] for k in ref} == ref
  b = io["tokens"].shape[0]
  tokens = np.concatenate([io["tokens"]] * 2).astype(np.int32)
  text, mask = np.concatenate([io["text"]] * 2), np.concatenate([io["text_mask"]] * 2)
  null = np.repeat([False, True], b)                      # [conditional | cond_drop_prob=1]
  out = np.asarray(jax.jit(lambda v, *a: module.apply(v, *a, video_shape=tuple(meta["grid"])))(
      variables, tokens, text, mask, null))
  errs = {"logits": _max(out[:b], io["logits"]), "null_logits": _max(out[b:], io["null_logits"])}
  if "guided" in io:   # forward_with_cond_scale(cond_scale=3)
    errs["guided"] = _max(out[b:] + 3.0 * (out[:b] - out[b:]), io["guided"])
  print(f"{name}: max |ours - torch| " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
  assert max(errs.values()) < TOL, errs


# ---- reading checkpoints ----

def _phenaki_sd():
  return load_file(str(FIXTURES / "phenaki.safetensors"))


def test_reads_phenaki_trainer_and_ema_layouts():
  sd = _phenaki_sd()
  ckpt = pt.read_checkpoint(FIXTURES / "phenaki.safetensors")
  assert (ckpt.kind, ckpt.source, ckpt.self_critic) == ("phenaki", "state_dict", None)
  for part in ("cvivit", "maskgit", "critic"):
    assert set(getattr(ckpt, part)) == {k[len(part) + 1:] for k in sd if k.startswith(part + ".")}
  trainer = pt.read_checkpoint({"step": np.asarray(7), "model": dict(sd, **{"cvivit.discr.x.weight": np.zeros(2)}),
                                "opt": {}, "scaler": {}})
  assert (trainer.kind, trainer.source, trainer.step) == ("phenaki", "phenaki_trainer", 7)
  assert "cvivit.discr.x.weight" in trainer.ignored and "discr" not in "".join(trainer.cvivit)

  cv = pt.load_state_dict(FIXTURES / "cvivit_vq_cosine.safetensors")
  wrapped = {"initted": np.asarray(True), "step": np.asarray(12),
             **{f"ema_model.{k}": v for k, v in cv.items()}, **{f"online_model.{k}": v + 1 for k, v in cv.items()}}
  ema, online = pt.read_checkpoint(wrapped), pt.read_checkpoint(wrapped, which="model")
  assert (ema.kind, ema.source, ema.step, online.source) == ("cvivit", "ema:ema", 12, "ema:model")
  np.testing.assert_array_equal(ema.cvivit["to_pixels.0.weight"], cv["to_pixels.0.weight"])
  np.testing.assert_array_equal(online.cvivit["to_pixels.0.weight"], cv["to_pixels.0.weight"] + 1)
  with pytest.raises(ValueError, match="which='best'"):
    pt.read_checkpoint(wrapped, which="best")


def test_self_critic_layout(tmp_path):
  sd = {k: v for k, v in _phenaki_sd().items() if not k.startswith("critic.")}
  sd.update({f"critic.maskgit.{k[8:]}": v for k, v in sd.items() if k.startswith("maskgit.")})
  sd.update({"critic.to_pred.0.weight": np.ones((1, 16), np.float32), "critic.to_pred.0.bias": np.zeros(1, np.float32)})
  ckpt = pt.read_checkpoint(sd)
  assert ckpt.critic is None and set(ckpt.self_critic) == {"to_pred.0.weight", "to_pred.0.bias"}
  assert all(r.startswith("the SelfCritic's copy") for k, r in ckpt.ignored.items() if k.startswith("critic.maskgit."))
  bad = dict(sd, **{"critic.maskgit.to_logits.bias": sd["maskgit.to_logits.bias"] + 1})
  with pytest.raises(pt.ConversionError, match="critic.maskgit.to_logits.bias"):
    pt.read_checkpoint(bad)
  with pytest.raises(ValueError, match="SelfCritic"):
    pt.convert_to_workdir(sd, tmp_path / "wd", image_size=16, num_frames=5, cvivit_kwargs=dict(patch_size=4))
  assert not any(tmp_path.iterdir())


def test_file_errors(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError):
    pt.read_checkpoint(tmp_path / "nope.safetensors")
  (tmp_path / "w.npz").write_bytes(b"")
  with pytest.raises(ValueError, match="unsupported extension"):
    pt.read_checkpoint(tmp_path / "w.npz")
  with pytest.raises(ValueError, match="not a phenaki-pytorch"):
    pt.read_checkpoint({"init_conv.weight": np.zeros(3)})
  (tmp_path / "w.pt").write_bytes(b"")
  monkeypatch.setitem(sys.modules, "torch", None)   # `import torch` now fails, installed or not
  with pytest.raises(ModuleNotFoundError, match=r"\[torch\]"):
    pt.read_checkpoint(tmp_path / "w.pt")


def test_key_errors_name_every_offending_key():
  sd = pt.load_state_dict(FIXTURES / "cvivit_vq_cosine.safetensors")
  kw = dict(image_size=16, patch_size=4)
  bad = dict(sd)
  bad["enc_spatial_transformer.layers.0.5.weight"] = np.zeros(3, np.float32)       # unknown
  del bad["dec_spatial_transformer.layers.1.1.to_q.weight"]                        # missing
  bad["to_pixels.0.weight"] = bad["to_pixels.0.weight"][:-1]                       # wrong shape
  bad["enc_temporal_transformer.layers.0.0.dsconv.weight"] = bad[
      "enc_temporal_transformer.layers.0.0.dsconv.weight"][:, 0]                   # wrong rank
  bad["enc_spatial_transformer.norm_out.beta"] = np.ones(12, np.float32)           # a bias we do not have
  with pytest.raises(pt.ConversionError) as e:
    pt.cvivit_from_torch(bad, **kw)
  err = e.value
  assert err.unknown == ["enc_spatial_transformer.layers.0.5.weight"]
  assert err.missing == ["params/dec_spatial_transformer/layer_1_attn/to_q/kernel"]
  assert any(m.startswith("to_pixels.0.weight (95, 12) -> params/to_pixels/kernel (12, 95)") and "(12, 96)" in m
             for m in err.mismatched)
  assert any(m.startswith("enc_temporal_transformer.layers.0.0.dsconv.weight (12, 3, 3, 3)") for m in err.mismatched)
  assert "enc_spatial_transformer.norm_out.beta: the bias-less LayerNorm's beta buffer is not zero" in err.mismatched
  for text in ("layers.0.5.weight", "layer_1_attn/to_q/kernel", "to_pixels.0.weight", "dsconv.weight"):
    assert text in str(err)
  # Given arguments must agree with the weights; what the weights cannot tell must be given.
  with pytest.raises(pt.ConversionError, match="spatial_rel_pos_bias.net.2.weight"):
    pt.cvivit_from_torch(sd, **kw, heads=3)
  with pytest.raises(ValueError, match="patch_size required"):
    pt.cvivit_from_torch(sd, image_size=16)
  with pytest.raises(pt.ConversionError, match="to_patch_emb_first_frame.1.weight"):
    pt.cvivit_from_torch(sd, image_size=16, patch_size=2)
  with pytest.raises(ValueError, match="codebook_scale"):
    pt.cvivit_from_torch(pt.load_state_dict(FIXTURES / "cvivit_lfq_rect.safetensors"), image_size=(16, 24),
                         patch_size=(4, 8), lookup_free_quantization_kwargs=dict(codebook_scale=2.0))
  with pytest.raises(ValueError, match="num_heads unknown"):
    pt.cvivit_from_torch(sd, **kw, num_heads=2)
  lfq = pt.load_state_dict(FIXTURES / "cvivit_lfq_rect.safetensors")
  with pytest.raises(pt.ConversionError, match="vq.mask"):
    pt.cvivit_from_torch(dict(lfq, **{"vq.mask": lfq["vq.mask"][::-1].copy()}), image_size=(16, 24), patch_size=(4, 8))
  with pytest.raises(ValueError, match="holds no maskgit"):
    pt.maskgit_from_torch(sd)


# ---- workdirs ----

def test_workdir_refuses_what_it_cannot_represent(tmp_path, capsys):
  base = ["convert", "--from", "phenaki-pytorch", "--num-frames", "5"]
  rect = base + ["--checkpoint", str(FIXTURES / "cvivit_lfq_rect.safetensors"), "--workdir", str(tmp_path / "a"),
                 "--image-size", "16"]
  assert cli.main(rect + ["--patch-size", "4"]) == 2        # its patches are 4x8 (of 16x24 frames)
  assert "to_patch_emb_first_frame.1.weight (96,)" in capsys.readouterr().err
  with pytest.raises(ValueError, match="a vidgen workdir has square frames"):
    pt.convert_to_workdir(FIXTURES / "cvivit_lfq_rect.safetensors", tmp_path / "b", image_size=(16, 24),
                          num_frames=5, cvivit_kwargs=dict(patch_size=(4, 8)))
  vq = base + ["--checkpoint", str(FIXTURES / "cvivit_vq_cosine.safetensors"), "--workdir", str(tmp_path / "c"),
               "--image-size", "16"]
  assert cli.main(vq) == 2
  assert "patch_size required" in capsys.readouterr().err
  assert cli.main(vq + ["--patch-size", "4", "--dim-mults", "1,2"]) == 2
  assert "--dim-mults: video-diffusion-pytorch flag" in capsys.readouterr().err
  with pytest.raises(ValueError, match="num_frames=4"):
    pt.convert_to_workdir(FIXTURES / "cvivit_vq_cosine.safetensors", tmp_path / "d", image_size=16, num_frames=4,
                          cvivit_kwargs=dict(patch_size=4))
  with pytest.raises(ValueError, match="bare maskgit"):
    pt.convert_to_workdir(FIXTURES / "maskgit_cond.safetensors", tmp_path / "e", image_size=16, num_frames=5)
  assert not any(tmp_path.iterdir())


@pytest.fixture
def hash_text(monkeypatch):
  """Generators get a hash text encoder of MiniLM's width instead of loading MiniLM."""
  monkeypatch.setattr(setup_lib, "build_text_encoder", lambda config: HashTextEncoder(dim=384, max_length=4))


def _truncated(variables, rows):
  out = jax.tree.map(lambda a: a, variables)
  emb = out["params"]["trunk"]["pos_emb"]
  emb["embedding"] = emb["embedding"][:rows]
  return out


@needs_family_compat
def test_cli_converts_a_phenaki_checkpoint_into_workdirs_that_match_and_sample(tmp_path, capsys, hash_text):
  from vidgen_jax.sample import generate
  meta, io = _fixture("phenaki")
  wd, sd = tmp_path / "wd", FIXTURES / "phenaki.safetensors"
  args = ["convert", "--from", "phenaki-pytorch", "--checkpoint", str(sd), "--workdir", str(wd),
          "--image-size", "16", "--num-frames", "5", "--patch-size", "4", "--steps", "2", "--step", "3"]
  assert cli.main(args) == 0
  assert "Phenaki: tokenizer" in capsys.readouterr().out
  c = json.loads((wd / "config.json").read_text())
  assert (c["family"], c["text"]["encoder"], c["model"]["critic"], c["model"]["reference_compat"]) == (
      "phenaki", "minilm", True, True)
  assert (c["sample"]["steps"], c["sample"]["cond_scale"], c["sample"]["temperature"]) == (2, 3.0, 0.9)
  assert c["tokenizer"]["workdir"] == str(wd / "tokenizer")
  t = json.loads((wd / "tokenizer" / "config.json").read_text())
  assert (t["family"], t["model"]["quantizer"], t["model"]["reference_compat"]) == ("cvivit", "vq", True)

  gen = generate.load_generator(wd)   # builds the tokenizer from its own workdir, restores the phenaki state
  run, params, grid = gen.run, gen.params, tuple(meta["grid"])
  assert gen.step == 3 and tuple(run.parts["grid"]) == grid
  expected = {"tokenizer": pt.cvivit_from_torch(sd, image_size=16, patch_size=4)[1],
              "maskgit": _truncated(pt.maskgit_from_torch(sd)[1], 48),     # 96 positions, 48 used
              "critic": _truncated(pt.critic_from_torch(sd)[1], 48)}       # 80 positions
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), expected)

  def fn(params, video, tokens, text, mask):
    tok = run.parts["tokenizer"]
    _, ids, _ = tok.apply(params["tokenizer"], video, method=CViViT.encode)
    decoded = tok.apply(params["tokenizer"], ids.reshape(ids.shape[0], -1), method=CViViT.decode_indices)
    logits = run.model.apply(params["maskgit"], tokens, text, mask, video_shape=grid)
    critic = run.parts["critic"].apply(params["critic"], tokens, text, mask, video_shape=grid)
    return ids, decoded, logits, critic

  with run.context():
    ids, decoded, logits, critic = jax.device_get(jax.jit(fn)(
        params, pt.video_from_torch_layout(io["video"]), io["tokens"].astype(np.int32), io["text"], io["text_mask"]))
  np.testing.assert_array_equal(ids, io["ids"])
  errs = {"decoded": _max(pt.video_to_torch_layout(decoded), io["decoded"]),
          "maskgit_logits": _max(logits, io["maskgit_logits"]), "critic_logits": _max(critic, io["critic_logits"])}
  print("phenaki workdir: max |ours - torch| " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
  assert max(errs.values()) < TOL, errs

  videos = gen.generate(["a red circle", "a blue square"], seed=0)
  assert videos.shape == (2, 5, 16, 16, 3) and videos.dtype == np.uint8
  assert cli.main(args) == 2   # never over an existing checkpoint
  assert "already holds checkpoints" in capsys.readouterr().err
