"""The Phenaki family end to end on tiny configs: tokenizer, MaskGIT + critic on its tokens, stories."""
import jax
import numpy as np
import pytest

from tests.helpers import HashTextEncoder, assert_same_training_state
from tests.test_cli import _vidgen
from vidgen_jax import configs
from vidgen_jax.data import pipeline
from vidgen_jax.train import loop, phenaki, setup

ONE = jax.devices()[:1]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  """A 4-step runlocal C-ViViT workdir (GAN from step 2), trained in-process."""
  wd = tmp_path_factory.mktemp("phenaki") / "cvivit"
  loop.train(configs.load_config_file("configs/cvivit_shapes.py:runlocal=True"), wd, devices=ONE)
  assert (wd / "samples" / "step_4.npz").is_file()                  # real | reconstruction pairs
  return wd


def test_two_stage_training_sampling_and_story(tmp_path, tokenizer_dir, capsys):
  cv, ph = tokenizer_dir, tmp_path / "phenaki"
  _vidgen("train", "--config", "configs/phenaki_shapes.py:runlocal=True", "--workdir", str(ph),
          f"--config.tokenizer.workdir={cv}")
  story = tmp_path / "story.npz"
  _vidgen("sample", "--workdir", str(ph), "--prompt", "a red circle moving left", "--prompt",
          "a red circle moving up", "--segment-frames", "5", "--out", str(story))
  assert np.load(story)["videos"].shape == (1, 9, 16, 16, 3)        # 5 + 4 new frames (1 primed)
  from vidgen_jax import cli    # refusals in-process: each comes before anything compiles
  assert cli.main(["train", "--config", "configs/phenaki_shapes.py:runlocal=True", "--workdir",
                   str(tmp_path / "x")]) == 2
  assert "tokenizer.workdir is empty" in capsys.readouterr().err
  assert cli.main(["sample", "--workdir", str(cv), "--prompt", "x", "--out", str(tmp_path / "y.gif")]) == 2
  assert "reconstructs" in capsys.readouterr().err
  # The tokenizer inside the Phenaki checkpoint is the trained one, unchanged by stage-2 training.
  from vidgen_jax.sample.phenaki import PhenakiGenerator, TokenizerReconstructor
  frozen = PhenakiGenerator.from_workdir(ph).params["tokenizer"]
  trained = TokenizerReconstructor.from_workdir(cv).params["tokenizer"]
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(trained)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _maskgit_steps(config, devices, n):
  """(run, final state, per-step metrics) of n MaskGIT steps on one fixed batch of 4 clips."""
  enc = HashTextEncoder(max_length=config.text.max_length)
  run = setup.build_run(config, text_encoder=enc, devices=devices)
  state, step = run.init_state(0), run.jit_train_step()
  batch = pipeline.attach_text(next(iter(pipeline.make_dataset(pipeline.make_source(config.data), 4, 0))), enc)
  metrics = []
  with run.context():
    for _ in range(n):
      state, m = step(state, pipeline.to_global(batch, run.batch_shardings()))
      metrics.append(jax.device_get(m))
  return run, state, metrics


def test_maskgit_trains_on_images_first_then_clips(tokenizer_dir):
  config = configs.load_config_file("configs/phenaki_shapes.py:runlocal=True")
  config.tokenizer.workdir, config.train.image_steps, config.model.critic = str(tokenizer_dir), 2, False
  phenaki.validate(config, 1)
  run, _, metrics = _maskgit_steps(config, ONE, 3)
  seen = [(float(m["token_steps"]), float(m["loss"])) for m in metrics]
  assert [s for s, _ in seen] == [1.0, 1.0, float(run.parts["grid"][0])]   # 1 token step = an image
  assert all(np.isfinite(loss) for _, loss in seen)
  config.train.image_steps = -3
  with pytest.raises(Exception, match="image_steps"):
    phenaki.validate(config, 1)


def test_sharded_maskgit_step_equals_single_device(tokenizer_dir):
  """Two MaskGIT + critic steps on 8 devices (batch over data x fsdp, parameters over fsdp x tensor, the
  frozen tokenizer inside) equal the same steps on one device."""
  def run_on(devices, mesh=None):
    config = configs.load_config_file("configs/phenaki_shapes.py:runlocal=True")
    config.tokenizer.workdir = str(tokenizer_dir)
    if mesh:
      config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
      config.sharding.preset = "fsdp_tensor"
    _, state, metrics = _maskgit_steps(config, devices, 2)
    return jax.device_get(state.params), metrics

  one, m1 = run_on(ONE)
  eight, m8 = run_on(jax.devices(), (2, 2, 2))
  for a, b in zip(m1, m8):
    assert np.isfinite(a["loss"])
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
  assert_same_training_state(one, eight)
