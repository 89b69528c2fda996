"""The Phenaki family end to end on tiny configs: tokenizer, MaskGIT + critic on its tokens, stories."""
import numpy as np

from tests.test_cli import _vidgen


def test_two_stage_training_sampling_and_story(tmp_path):
  cv, ph = tmp_path / "cvivit", tmp_path / "phenaki"
  out = _vidgen("train", "--config", "configs/cvivit_shapes.py:runlocal=True", "--workdir", str(cv))
  assert "codebook_usage" in out.stderr and "gan_weight" in out.stderr
  assert (cv / "samples" / "step_4.npz").is_file()                  # real | reconstruction pairs
  _vidgen("train", "--config", "configs/phenaki_shapes.py:runlocal=True", "--workdir", str(ph),
          f"--config.tokenizer.workdir={cv}")
  story = tmp_path / "story.npz"
  _vidgen("sample", "--workdir", str(ph), "--prompt", "a red circle moving left", "--prompt",
          "a red circle moving up", "--segment-frames", "5", "--out", str(story))
  assert np.load(story)["videos"].shape == (1, 9, 16, 16, 3)        # 5 + 4 new frames (1 primed)
  bad = _vidgen("train", "--config", "configs/phenaki_shapes.py:runlocal=True", "--workdir", str(tmp_path / "x"),
                check=False)
  assert bad.returncode != 0 and "tokenizer.workdir is empty" in bad.stderr
  wrong = _vidgen("sample", "--workdir", str(cv), "--prompt", "x", "--out", str(tmp_path / "y.gif"), check=False)
  assert wrong.returncode != 0 and "reconstructs" in wrong.stderr
  # The tokenizer inside the Phenaki checkpoint is the trained one, unchanged by stage-2 training.
  import jax
  from vidgen_jax.sample.phenaki import PhenakiGenerator, TokenizerReconstructor
  frozen = PhenakiGenerator.from_workdir(ph).params["tokenizer"]
  trained = TokenizerReconstructor.from_workdir(cv).params["tokenizer"]
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(trained)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
