import re

import pytest

from vidgen_jax import configs
from vidgen_jax.train import validation


def test_load_variants_and_args():
  demo = configs.load_config_file("configs/vdm_shapes.py")
  assert demo.variant == "demo"
  s = configs.load_config_file("configs/vdm_shapes.py:variant=S")
  assert tuple(s.model.dim_mults) == (1, 2, 4)
  tiny = configs.load_config_file("configs/vdm_shapes.py:variant=S,runlocal=True")
  assert tiny.data.image_size == 16
  for c in (demo, s, tiny):
    validation.validate_vdm(c, num_devices=8)


def test_bad_arguments():
  with pytest.raises(ValueError, match="variant"):
    configs.load_config_file("configs/vdm_shapes.py:variant=XXL")
  with pytest.raises(ValueError, match="unknown"):
    configs.load_config_file("configs/vdm_shapes.py:nope=1")
  with pytest.raises(FileNotFoundError):
    configs.load_config_file("configs/missing.py")


def test_overrides_are_typed():
  c = configs.load_config_file("configs/vdm_shapes.py:runlocal=True")
  configs.apply_overrides(c, ["--config.optim.lr=3e-4", "--config.train.num_steps", "7",
                              "--config.model.dim_mults=(1,2,4)", "--config.model.cross_attention=false"])
  assert c.optim.lr == 3e-4 and c.train.num_steps == 7
  assert tuple(c.model.dim_mults) == (1, 2, 4) and c.model.cross_attention is False
  with pytest.raises(ValueError, match="no field"):
    configs.apply_overrides(c, ["--config.optim.lrr=1"])
  with pytest.raises(ValueError, match="expected a value of type int"):
    configs.apply_overrides(c, ["--config.train.num_steps=abc"])


def test_json_round_trip_and_diff():
  c = configs.load_config_file("configs/vdm_shapes.py:runlocal=True")
  back = configs.from_json(configs.to_json(c))
  assert configs.diff(c, back) == []
  back.model.dim = 64
  assert configs.diff(c, back) == ["model.dim"]


def test_validation_lists_every_problem():
  c = configs.load_config_file("configs/vdm_shapes.py:runlocal=True")
  c.data.image_size = 18            # not divisible by 2 for dim_mults (1, 2)... 18 is; use 15
  c.data.image_size = 15
  c.diffusion.prediction = "score"
  c.train.batch_size = 6            # not divisible by 4 data-parallel devices below
  c.mesh.data, c.mesh.fsdp = 4, 2
  c.optim.ema_decay = 1.5
  c.sample.steps = 5000
  c.diffusion.high_noise_prob, c.diffusion.high_noise_from = 1.5, 1.0
  c.model.position_features = -1
  c.diffusion.frame_noise_prob = -0.1
  c.diffusion.clean_prefix_prob = 1.5
  c.sample.frame_offset = -1
  c.model.temporal_patch_size = 3   # 4 frames
  c.diffusion.temporal_loss_weight = -1.0
  c.data.motions = "moving left, spinning"
  c.data.motion_weights = "growing=-2"
  c.data.reversal_prob = 1.5
  with pytest.raises(validation.ConfigError) as e:
    validation.validate_vdm(c, num_devices=8)
  msg = str(e.value)
  for needle in ("data.image_size=15", "diffusion.prediction='score'", "train.batch_size/grad_accum=6",
                 "optim.ema_decay=1.5", "sample.steps=5000", "diffusion.high_noise_prob=1.5",
                 "diffusion.high_noise_from=1.0", "model.position_features=-1",
                 "diffusion.frame_noise_prob=-0.1", "diffusion.clean_prefix_prob=1.5", "sample.frame_offset=-1",
                 "data.num_frames=4 must be divisible by model.temporal_patch_size=3",
                 "diffusion.clean_prefix_prob=1.5 works frame by frame",
                 "diffusion.temporal_loss_weight=-1.0: must be >= 0", "data.motions: unknown motion(s) ['spinning']",
                 "data.motion_weights: weight of 'growing' must be a finite number >= 0",
                 "data.reversal_prob=1.5: must be a probability", "data.reversal_prob=1.5 works frame by frame"):
    assert needle in msg, msg
  assert len(e.value.problems) == 18
  c = configs.load_config_file("configs/vdm_shapes.py:runlocal=True")
  c.diffusion.prediction, c.diffusion.temporal_loss_weight = "v", 2.0
  with pytest.raises(validation.ConfigError, match="needs diffusion.prediction='x0', got 'v'"):
    validation.validate_vdm(c, num_devices=1)
  c = configs.load_config_file("configs/vdm_shapes.py:runlocal=True")
  for clip, needle in [((5, 1), "must be () (off) or (lo, hi)"), ((0, 5, 9), "must be () (off)"),
                       (("a", 5), "must be () (off)")]:
    c.diffusion.loss_snr_clip = clip
    with pytest.raises(validation.ConfigError, match=re.escape(needle)):
      validation.validate_vdm(c, num_devices=1)
  c.diffusion.loss_snr_clip, c.diffusion.loss = (0, 5), "l1"
  with pytest.raises(validation.ConfigError, match="needs diffusion.loss='l2'"):
    validation.validate_vdm(c, num_devices=1)
  c.diffusion.loss = "l2"
  validation.validate_vdm(c, num_devices=1)
  c.data.source, c.data.folder, c.data.reversal_prob = "folder", "clips", 0.3
  with pytest.raises(validation.ConfigError, match="data.source='folder' has none"):
    validation.validate_vdm(c, num_devices=1)
  c.data.source, c.data.num_frames = "moving_shapes", 1
  with pytest.raises(validation.ConfigError, match=r"needs data.num_frames >= 2"):
    validation.validate_vdm(c, num_devices=1)
  c.data.num_frames = 4
  for t_range, needle in [((0.5, 0.5), "diffusion.t_range=(0.5, 0.5): needs 0 <= lo < hi <= 1"),
                          ((0.5,), "diffusion.t_range must be () or (lo, hi)")]:
    c.diffusion.t_range = t_range
    with pytest.raises(validation.ConfigError, match=re.escape(needle)):
      validation.validate_vdm(c, num_devices=1)
  c.diffusion.t_range, c.diffusion.high_noise_prob = (0.0, 0.5), 0.5
  with pytest.raises(validation.ConfigError, match="both say where to train"):
    validation.validate_vdm(c, num_devices=1)
  c.diffusion.high_noise_prob = 0.0
  validation.validate_vdm(c, num_devices=1)


def test_mesh_degrees_checked():
  c = configs.load_config_file("configs/vdm_shapes.py:runlocal=True")
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 3, -1, 1
  with pytest.raises(validation.ConfigError, match="not divisible"):
    validation.validate_vdm(c, num_devices=8)
  c.mesh.data, c.mesh.fsdp = -1, -1
  with pytest.raises(validation.ConfigError, match="at most one axis"):
    validation.validate_vdm(c, num_devices=8)
