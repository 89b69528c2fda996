"""Writes the video-diffusion-pytorch 0.7.0 parity fixtures of tests/test_convert_vdm.py.

Needs the `[torch]` extra (torch + video-diffusion-pytorch==0.7.0), best in a separate venv so the project's
stays torch-free:

  python -m venv /tmp/torchenv
  /tmp/torchenv/bin/pip install torch video-diffusion-pytorch==0.7.0 safetensors   # (CPU wheel is enough)
  /tmp/torchenv/bin/python launch/make_vdm_torch_fixtures.py [--out tests/fixtures/vdm_torch]

For every configuration NAME in CONFIGS (tiny reference models, fixed torch seed) it writes:
  NAME.safetensors     the reference state_dict, exactly as torch saves it (Unet3D or GaussianDiffusion keys)
  NAME.io.safetensors  fixed inputs and reference outputs:
                         x (B, C, F, H, W), t (B,), [cond (B, cond_dim)], [focus (B,) bool]
                         out = Unet3D(x, t, cond[, focus_present_mask=focus])
                         step_x, step_t, step_noise, step_out = GaussianDiffusion.p_sample(step_x, step_t, cond,
                           cond_scale) with torch.randn_like returning step_noise (one ancestral DDPM step)
  NAME.json            Unet3D / GaussianDiffusion constructor kwargs, the p_sample settings, versions
and, for the first configuration, NAME.trainer.pt: a reference Trainer checkpoint {'step', 'model', 'ema',
'scaler'} whose 'ema' is NAME's diffusion state_dict and whose 'model' differs from it.

`resnet_groups` in a configuration builds the pre-0.7.0 Block (nn.GroupNorm(resnet_groups, dim_out) in place
of 0.7.0's RMSNorm: the only code difference between 0.6.2 and 0.7.0), i.e. the older `norm.weight` /
`norm.bias` state_dict layout. Norm gains (initialised to ones/zeros in torch) are randomised so that a
mapping mistake on them cannot hide.
"""
import argparse
import json
import pathlib
import sys
import types

import numpy as np
import torch
from torch import nn


def _import_reference():
  """video_diffusion_pytorch's model module; torchvision (used only by its Dataset/Trainer) may be stubbed.

  The CPU torch wheel often has no matching torchvision on the package index; the U-Net and diffusion code
  never touch it, so a stub with the names the module reads at import time is enough.
  """
  try:
    import torchvision  # noqa: F401
  except Exception:  # absent, or a build that does not match this torch
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
      del sys.modules[name]
    stub = types.ModuleType("torchvision")
    stub.transforms = types.SimpleNamespace(ToTensor=lambda *a, **k: None, ToPILImage=lambda *a, **k: None,
                                            Compose=lambda *a, **k: None)
    stub.utils = types.SimpleNamespace()
    sys.modules["torchvision"] = stub
  import video_diffusion_pytorch.video_diffusion_pytorch as vdp
  return vdp


# name -> Unet3D kwargs, GaussianDiffusion kwargs, batch/frames/size, p_sample settings, what is saved.
CONFIGS = {
    # Unconditional (what the reference Trainer trains), linear attention, saved as a GaussianDiffusion
    # state_dict (denoise_fn. prefix + schedule buffers); the focus-present mask is exercised too.
    "uncond_linear": dict(
        unet=dict(dim=4, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8),
        diffusion=dict(timesteps=10), batch=2, frames=4, size=8,
        step=dict(t=(6, 0), cond_scale=1.0), focus=(True, False), save="diffusion"),
    # Conditional, three levels, no linear attention, dim_head 36 > 32 (partial rotary), 3 heads, 5x5 init
    # conv; guidance 2.0 and dynamic thresholding in the sampling step. Bare Unet3D state_dict.
    "cond_partial_rotary": dict(
        unet=dict(dim=4, cond_dim=12, dim_mults=(1, 2, 4), attn_heads=3, attn_dim_head=36,
                  init_kernel_size=5, use_sparse_linear_attn=False),
        diffusion=dict(timesteps=20, use_dynamic_thres=True, dynamic_thres_percentile=0.9),
        batch=2, frames=3, size=8, step=dict(t=(13, 4), cond_scale=2.0), save="unet"),
    # Conditional, one level (no down/upsampling), 1 grey input channel and 2 output channels, 1 head,
    # linear attention, 5 frames of 6x6.
    "cond_one_level": dict(
        unet=dict(dim=8, cond_dim=6, dim_mults=(1,), attn_heads=1, attn_dim_head=16, channels=1, out_dim=1),
        diffusion=dict(timesteps=10, channels=1), batch=2, frames=5, size=6,
        step=dict(t=(9, 1), cond_scale=3.0), save="unet"),
    # The pre-0.7.0 layout: GroupNorm(2, C) in every Block (keys `blockN.norm.weight` / `.bias`).
    "old_groupnorm": dict(
        unet=dict(dim=4, cond_dim=5, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8),
        resnet_groups=2, diffusion=dict(timesteps=10), batch=2, frames=4, size=8,
        step=dict(t=(3, 7), cond_scale=1.0), save="unet"),
}
TRAINER_FIXTURE = "uncond_linear"


def _randomise_norms(model, gen):
  """Norm gains start at ones (and GroupNorm biases at zeros): perturb them so every mapping is tested."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith(("gamma", "norm.weight", "norm.bias")):
        p.add_(0.3 * torch.randn(p.shape, generator=gen))


def _state_numpy(module):
  # Tied tensors (the shared rotary freqs) are copied per key, as a torch.save round trip would give.
  return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def build(vdp, spec, seed):
  torch.manual_seed(seed)
  groups = spec.get("resnet_groups")
  if groups:
    original = vdp.RMSNorm
    vdp.RMSNorm = lambda dim: nn.GroupNorm(groups, dim)   # 0.6.x Block: nn.GroupNorm(resnet_groups, dim_out)
    try:
      unet = vdp.Unet3D(**spec["unet"])
    finally:
      vdp.RMSNorm = original
  else:
    unet = vdp.Unet3D(**spec["unet"])
  gen = torch.Generator().manual_seed(seed + 1)
  _randomise_norms(unet, gen)
  diffusion = vdp.GaussianDiffusion(unet, image_size=spec["size"], num_frames=spec["frames"], **spec["diffusion"])
  return unet.eval(), diffusion.eval()


def make_fixture(vdp, name, spec, seed):
  unet, diffusion = build(vdp, spec, seed)
  cfg = spec["unet"]
  b, f, s = spec["batch"], spec["frames"], spec["size"]
  c = cfg.get("channels", 3)
  gen = torch.Generator().manual_seed(seed + 2)
  io = {"x": torch.randn(b, c, f, s, s, generator=gen),
        "t": torch.randint(0, diffusion.num_timesteps, (b,), generator=gen)}
  cond = torch.randn(b, cfg["cond_dim"], generator=gen) if cfg.get("cond_dim") else None
  if cond is not None:
    io["cond"] = cond
  kwargs = {}
  if "focus" in spec:
    io["focus"] = torch.tensor(spec["focus"])
    kwargs["focus_present_mask"] = io["focus"]
  with torch.no_grad():
    io["out"] = unet(io["x"], io["t"], cond=cond, **kwargs)

  # One ancestral step x_t -> x_{t-1}, with the step's Gaussian noise fixed.
  step = spec["step"]
  io["step_x"] = torch.randn(b, c, f, s, s, generator=gen)
  io["step_t"] = torch.tensor(step["t"], dtype=torch.long)
  io["step_noise"] = torch.randn(b, c, f, s, s, generator=gen)
  randn_like = torch.randn_like
  torch.randn_like = lambda x, *a, **k: io["step_noise"].clone()
  try:
    io["step_out"] = diffusion.p_sample(io["step_x"], io["step_t"], cond=cond, cond_scale=step["cond_scale"])
  finally:
    torch.randn_like = randn_like

  owner = diffusion if spec["save"] == "diffusion" else unet
  meta = {
      "unet": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
      "resnet_groups": spec.get("resnet_groups"),
      "diffusion": dict(spec["diffusion"], image_size=s, num_frames=f),
      "step": {"cond_scale": step["cond_scale"], "clip_denoised": True},
      "saved": "GaussianDiffusion.state_dict()" if spec["save"] == "diffusion" else "Unet3D.state_dict()",
      "seed": seed,
      "versions": {"torch": torch.__version__, "video-diffusion-pytorch": _version()},
  }
  return _state_numpy(owner), {k: v.detach().cpu().numpy() for k, v in io.items()}, meta, diffusion


def _version():
  from importlib import metadata
  return metadata.version("video-diffusion-pytorch")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parents[1] / "tests/fixtures/vdm_torch"))
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  from safetensors.numpy import save_file
  vdp = _import_reference()
  if _version() != "0.7.0":
    raise SystemExit(f"need video-diffusion-pytorch 0.7.0, found {_version()}")
  torch.set_grad_enabled(False)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  for i, (name, spec) in enumerate(CONFIGS.items()):
    state, io, meta, diffusion = make_fixture(vdp, name, spec, args.seed + 10 * i)
    # contiguous copies: safetensors.numpy writes an array's buffer as is, whatever its strides
    state, io = ({k: np.ascontiguousarray(v) for k, v in d.items()} for d in (state, io))
    save_file(state, str(out / f"{name}.safetensors"))
    save_file(io, str(out / f"{name}.io.safetensors"))
    (out / f"{name}.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print(f"{name}: {len(state)} state_dict entries, {sum(v.size for v in state.values())} values; "
          f"max |out| {np.abs(io['out']).max():.3f}")
    if name == TRAINER_FIXTURE:
      ema = diffusion.state_dict()
      model = {k: v + 0.01 if k.startswith("denoise_fn.") and not k.endswith("freqs") else v
               for k, v in ema.items()}
      ckpt = {"step": 7, "model": model, "ema": ema, "scaler": {}}
      torch.save(ckpt, out / f"{name}.trainer.pt")
  total = sum(f.stat().st_size for f in out.iterdir())
  print(f"wrote {out} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
  main()
