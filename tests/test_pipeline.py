"""grain pipeline: deterministic, per-process slices that add up to the global batch, resumable position."""
import numpy as np
import pytest

from tests.helpers import HashTextEncoder, tiny_config
from vidgen_jax.data import pipeline


def _src():
  return pipeline.make_source(tiny_config().data)


def _key(video):
  return video.tobytes()


def test_process_slices_make_up_the_global_batch():
  whole = next(iter(pipeline.make_dataset(_src(), 8, seed=3, process_index=0, process_count=1)))
  parts = [next(iter(pipeline.make_dataset(_src(), 8, seed=3, process_index=i, process_count=2)))
           for i in range(2)]
  assert all(p["video"].shape[0] == 4 for p in parts)
  assert {_key(v) for v in whole["video"]} == {_key(v) for p in parts for v in p["video"]}
  assert not {_key(v) for v in parts[0]["video"]} & {_key(v) for v in parts[1]["video"]}


def test_deterministic_and_resumable():
  a = iter(pipeline.make_dataset(_src(), 4, seed=0))
  b = iter(pipeline.make_dataset(_src(), 4, seed=0))
  first = [next(a) for _ in range(3)]
  for x in first:
    np.testing.assert_array_equal(x["video"], next(b)["video"])
  state = a.get_state()
  expected = next(a)
  fresh = iter(pipeline.make_dataset(_src(), 4, seed=0))
  fresh.set_state(state)
  np.testing.assert_array_equal(next(fresh)["video"], expected["video"])
  other = next(iter(pipeline.make_dataset(_src(), 4, seed=1)))
  assert not np.array_equal(other["video"], first[0]["video"])


def test_attach_text_and_bad_batch_split():
  batch = next(iter(pipeline.make_dataset(_src(), 4, seed=0)))
  out = pipeline.attach_text(batch, HashTextEncoder(dim=16, max_length=12))
  assert out["text_tokens"].shape == (4, 12, 16) and out["text_mask"].dtype == bool
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.make_dataset(_src(), 5, seed=0, process_index=0, process_count=2)
