"""Writes the phenaki-pytorch 0.5.0 parity fixtures of tests/test_phenaki_convert.py.

Needs torch, phenaki-pytorch 0.5.0 and vector-quantize-pytorch, best in a separate venv so the project's stays
torch-free (the committed fixtures: torch 2.13 CPU with source checkouts of both packages, the versions of
research/anchors_pytorch.md section 0; NAME.json records what was imported):

  python -m venv /tmp/torchenv
  /tmp/torchenv/bin/pip install torch phenaki-pytorch==0.5.0 safetensors        # (CPU wheel is enough)
  /tmp/torchenv/bin/python launch/make_phenaki_torch_fixtures.py [--out tests/fixtures/phenaki_torch]

torchvision (only the reference's VGG uses it), beartype (decorators) and phenaki_pytorch.t5 (transformers;
only to encode raw text, the fixtures pass text embeddings) are stubbed when they are not installed. No
network access: no VGG, no T5, no discriminator (use_vgg_and_gan=False).

For every configuration NAME in CONFIGS (tiny reference models, fixed torch seed; every parameter perturbed
by 0.1 * N(0, 1) so nothing sits at its initial value, and the VQ codebook's EMA buffers moved by a few
training-mode forward passes) it writes:
  NAME.safetensors     the reference state_dict exactly as torch saves it (CViViT, MaskGit, TokenCritic or
                       Phenaki keys; int64/bool buffers included)
  NAME.io.safetensors  fixed inputs and reference outputs, in the reference's layouts:
    CViViT   video (B, C, T, H, W) in [0, 1]; ids = CViViT(video, return_only_codebook_ids=True) (B, S, h, w);
             enc = CViViT.encode(patch tokens) (B, S, h, w, dim), pre-quantization; recon =
             CViViT(video, return_recons_only=True) (also what decode_from_codebook_indices(ids) gives);
             image (B, C, H, W), image_ids, image_recon (B, C, H, W): the 1-frame (image) path;
             vq only: ema_embed, ema_embed_avg, ema_cluster_size = the codebook buffers after one more
             training-mode forward pass on `video` (the EMA update)
    MaskGit  tokens (B, N) in [0, num_tokens] (num_tokens = mask id), text (B, L, dim_context), text_mask
             (B, L); logits = MaskGit(tokens, text_mask=, video_patch_shape=, context=text), null_logits =
             the same with cond_drop_prob=1 (every text token masked: only the null key/values),
             guided = forward_with_cond_scale(..., cond_scale=3)
    Critic   tokens, text, text_mask; logits = TokenCritic(...) (B, N), null_logits (cond_drop_prob=1)
    Phenaki  video, ids (its cvivit's), tokens (ids partly masked), text, text_mask; maskgit_logits,
             critic_logits as above; decoded = cvivit.decode_from_codebook_indices(ids flattened)
  NAME.json            the constructor kwargs of every module, the token grid, seed and versions.
"""
import argparse
import json
import pathlib

import numpy as np
import torch


def _reference_runner():
  """vidgen_jax/bench/torch_phenaki_reference.py, loaded by path: a standalone script (stdlib + torch), so this
  works in a torch venv without vidgen_jax installed. Its stand-ins for phenaki-pytorch's optional imports
  are the ones used here."""
  import importlib.util
  path = pathlib.Path(__file__).resolve().parents[1] / "vidgen_jax/bench/torch_phenaki_reference.py"
  spec = importlib.util.spec_from_file_location("torch_phenaki_reference", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


TEXT_MASK = ((True, True, True, False, False), (True, True, False, False, False))

CONFIGS = {
    # LFQ (with projections: dim 16 != log2 256), rectangular frames and patches, 3 heads (non-power-of-2
    # ALiBi slopes).
    "cvivit_lfq_rect": dict(
        kind="cvivit",
        cvivit=dict(dim=16, codebook_size=256, image_size=(16, 24), patch_size=(4, 8), temporal_patch_size=2,
                    spatial_depth=1, temporal_depth=1, dim_head=8, heads=3, use_vgg_and_gan=False),
        batch=2, frames=5),
    # The EMA cosine-similarity VQ (lookup_free_quantization=False), its buffers moved by training passes.
    "cvivit_vq_cosine": dict(
        kind="cvivit",
        cvivit=dict(dim=12, codebook_size=32, image_size=16, patch_size=4, temporal_patch_size=2,
                    spatial_depth=2, temporal_depth=1, dim_head=8, heads=2, use_vgg_and_gan=False,
                    lookup_free_quantization=False),
        batch=2, frames=5, ema_passes=3),
    # Conditional MaskGit: cross-attention with 2 null key/values, a partial text mask, max_seq_len beyond
    # the sequence.
    "maskgit_cond": dict(
        kind="maskgit",
        maskgit=dict(dim=16, num_tokens=64, max_seq_len=40, depth=2, dim_head=8, heads=2, dim_context=12),
        batch=2, grid=(2, 3, 4), text_len=5),
    "critic": dict(
        kind="critic",
        critic=dict(dim=16, num_tokens=64, max_seq_len=24, depth=2, dim_head=8, heads=2, dim_context=12,
                    has_cross_attn=True),
        batch=2, grid=(2, 3, 4), text_len=5),
    # A whole Phenaki state_dict (cvivit./maskgit./critic.): a VQ tokenizer (trained EMA buffers), text width
    # 384 (MiniLM's), position tables longer than the 48 tokens of the 5-frame clip (80: 9 frames).
    "phenaki": dict(
        kind="phenaki",
        cvivit=dict(dim=8, codebook_size=64, image_size=16, patch_size=4, temporal_patch_size=2,
                    spatial_depth=1, temporal_depth=1, dim_head=8, heads=2, use_vgg_and_gan=False,
                    lookup_free_quantization=False),
        maskgit=dict(dim=16, num_tokens=64, max_seq_len=96, depth=1, dim_head=8, heads=2, dim_context=384),
        critic=dict(dim=16, num_tokens=64, max_seq_len=80, depth=1, dim_head=8, heads=2, dim_context=384,
                    has_cross_attn=True),
        batch=2, frames=5, text_len=5, ema_passes=3),
}


def _perturb(module, gen):
  with torch.no_grad():
    for _, p in module.named_parameters():
      p.add_(0.1 * torch.randn(p.shape, generator=gen))


def _state_numpy(module):
  return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def _jsonable(kwargs):
  return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


def _pair(v):
  return (v, v) if isinstance(v, int) else tuple(v)


def _video(spec, kw, gen):
  hh, ww = _pair(kw["image_size"])
  return torch.rand(spec["batch"], kw.get("channels", 3), spec["frames"], hh, ww, generator=gen)


def _cvivit_io(m, video, gen):
  io = {"video": video}
  ff, rf = video[:, :, :1], video[:, :, 1:]
  tokens = torch.cat((m.to_patch_emb_first_frame(ff), m.to_patch_emb(rf)), dim=1)
  io["enc"] = m.encode(tokens)
  io["ids"] = m(video, return_only_codebook_ids=True)
  io["recon"] = m(video, return_recons_only=True)
  io["image"] = torch.rand(video.shape[0], video.shape[1], *video.shape[3:], generator=gen)
  io["image_ids"] = m(io["image"], return_only_codebook_ids=True)
  io["image_recon"] = m(io["image"], return_recons_only=True)
  return io


def _tokens(spec, num_tokens, gen):
  n = int(np.prod(spec["grid"]))
  tokens = torch.randint(0, num_tokens, (spec["batch"], n), generator=gen)
  masked = torch.rand(spec["batch"], n, generator=gen) < 0.4
  return tokens.masked_fill(masked, num_tokens)   # num_tokens is the mask id


def _text(spec, dim_context, gen):
  text = torch.randn(spec["batch"], spec["text_len"], dim_context, generator=gen)
  mask = torch.tensor(TEXT_MASK)[:spec["batch"], :spec["text_len"]]
  return text * mask[..., None], mask   # zeros at padding, as the reference's T5 encoding gives


def _maskgit_io(mg, tokens, text, mask, grid):
  kw = dict(text_mask=mask, video_patch_shape=tuple(grid), context=text)
  return {"logits": mg(tokens, cond_drop_prob=0.0, **kw), "null_logits": mg(tokens, cond_drop_prob=1.0, **kw),
          "guided": mg.forward_with_cond_scale(tokens, cond_scale=3.0, **kw)}


def _critic_io(critic, tokens, text, mask, grid):
  kw = dict(text_mask=mask, video_patch_shape=tuple(grid), context=text)
  return {"logits": critic(tokens, cond_drop_prob=0.0, **kw), "null_logits": critic(tokens, cond_drop_prob=1.0, **kw)}


def make_fixture(name, spec, seed):
  from phenaki_pytorch.cvivit import CViViT
  from phenaki_pytorch.phenaki_pytorch import MaskGit, Phenaki, TokenCritic
  torch.manual_seed(seed)
  gen = torch.Generator().manual_seed(seed + 1)
  kind = spec["kind"]
  meta = {"kind": kind, "seed": seed, "batch": spec["batch"]}
  io = {}
  if kind == "cvivit":
    owner = CViViT(**spec["cvivit"])
    _perturb(owner, gen)
    video = _video(spec, spec["cvivit"], gen)
    if spec.get("ema_passes"):   # move the codebook's EMA buffers away from their initial values
      owner.train()
      for _ in range(spec["ema_passes"]):
        owner(_video(spec, spec["cvivit"], gen))
    owner.eval()
    io.update(_cvivit_io(owner, video, gen))
    state = _state_numpy(owner)
    if spec.get("ema_passes"):   # one more training-mode pass on `video`: the EMA update to reproduce
      owner.train()
      owner(video)
      cb = owner.vq._codebook
      io.update(ema_embed=cb.embed[0], ema_embed_avg=cb.embed_avg[0], ema_cluster_size=cb.cluster_size[0])
    meta["cvivit"] = _jsonable(spec["cvivit"])
    meta["saved"] = "CViViT.state_dict()"
  elif kind in ("maskgit", "critic"):
    kw = spec[kind]
    owner = (MaskGit if kind == "maskgit" else TokenCritic)(**kw).eval()
    _perturb(owner, gen)
    tokens = _tokens(spec, kw["num_tokens"], gen)
    text, mask = _text(spec, kw["dim_context"], gen)
    io.update(tokens=tokens, text=text, text_mask=mask)
    io.update((_maskgit_io if kind == "maskgit" else _critic_io)(owner, tokens, text, mask, spec["grid"]))
    state = _state_numpy(owner)
    meta[kind] = _jsonable(kw)
    meta["grid"] = list(spec["grid"])
    meta["saved"] = f"{type(owner).__name__}.state_dict()"
  elif kind == "phenaki":
    cvivit, maskgit = CViViT(**spec["cvivit"]), MaskGit(**spec["maskgit"])
    critic = TokenCritic(**spec["critic"])
    _perturb(cvivit, gen)
    cvivit.train()
    for _ in range(spec.get("ema_passes", 0)):   # move the codebook's EMA buffers
      cvivit(_video(spec, spec["cvivit"], gen))
    owner = Phenaki(cvivit=cvivit, maskgit=maskgit, critic=critic, text_embed_dim=spec["maskgit"]["dim_context"])
    owner.eval()
    _perturb(owner, gen)   # maskgit and critic (and the tokenizer a second time)
    video = _video(spec, spec["cvivit"], gen)
    ids = owner.cvivit(video, return_only_codebook_ids=True)
    grid = tuple(ids.shape[1:])
    flat = ids.flatten(1)
    masked = torch.rand(flat.shape, generator=gen) < 0.5
    tokens = flat.masked_fill(masked, maskgit.mask_id)
    text, mask = _text(spec, spec["maskgit"]["dim_context"], gen)
    io.update(video=video, ids=ids, tokens=tokens, text=text, text_mask=mask,
              decoded=owner.cvivit.decode_from_codebook_indices(flat))
    io["maskgit_logits"] = _maskgit_io(owner.maskgit, tokens, text, mask, grid)["logits"]
    io["critic_logits"] = _critic_io(owner.critic, tokens, text, mask, grid)["logits"]
    state = _state_numpy(owner)
    meta.update(cvivit=_jsonable(spec["cvivit"]), maskgit=_jsonable(spec["maskgit"]),
                critic=_jsonable(spec["critic"]), grid=list(grid), frames=spec["frames"],
                saved="Phenaki.state_dict()")
  else:
    raise ValueError(kind)
  meta["versions"] = _versions()
  # contiguous copies: safetensors.numpy writes an array's buffer as is, whatever its strides
  return state, {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in io.items()}, meta


def _versions():
  from importlib import metadata
  out = {"torch": torch.__version__}
  for dist in ("phenaki-pytorch", "vector-quantize-pytorch"):
    try:
      out[dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
      out[dist] = "source checkout"
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parents[1] / "tests/fixtures/phenaki_torch"))
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  from safetensors.numpy import save_file
  _reference_runner()._stub_missing_optional_modules()
  torch.set_grad_enabled(False)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  for i, (name, spec) in enumerate(CONFIGS.items()):
    state, io, meta = make_fixture(name, spec, args.seed + 10 * i)
    for suffix, tensors in ((".safetensors", state), (".io.safetensors", io)):
      save_file(tensors, str(out / f"{name}{suffix}"))
      (out / f"{name}{suffix}").chmod(0o644)
    (out / f"{name}.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print(f"{name}: {len(state)} state_dict entries, {sum(v.size for v in state.values())} values")
  total = sum(f.stat().st_size for f in out.iterdir())
  print(f"wrote {out} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
  main()
