"""grain input pipelines: a source from the config, shuffled, split per process, batched; global arrays out.

Every process reads only its own slice of the (seeded, shuffled) index space and builds its local batch; the
local batches become one global array sharded over the mesh's batch axes with
`jax.make_array_from_process_local_data`, so the same code runs on one CPU and on a multi-host TPU pod.
The grain iterator's state is small JSON (the next index) and is checkpointed with the train state.
"""
import jax
import numpy as np
import grain

from vidgen_jax.data import folder as folder_lib
from vidgen_jax.data import moving_shapes

# Keys that stay on the host (strings, drawing parameters) and never become device arrays.
HOST_ONLY = ("caption", "params", "path")


def make_source(data_cfg):
  if data_cfg.source == "moving_shapes":
    return moving_shapes.MovingShapes(num_examples=data_cfg.num_examples, image_size=data_cfg.image_size,
                                      num_frames=data_cfg.num_frames, seed=data_cfg.seed, split=data_cfg.split,
                                      motions=data_cfg.get("motions") or None,
                                      motion_weights=data_cfg.get("motion_weights") or None,
                                      reversal_prob=data_cfg.get("reversal_prob", 0.0))
  if data_cfg.source == "folder":
    return folder_lib.VideoFolder(data_cfg.folder, image_size=data_cfg.image_size,
                                  num_frames=data_cfg.num_frames, pad=data_cfg.pad)
  raise ValueError(f"data.source {data_cfg.source!r} unknown; choose moving_shapes or folder")


def make_dataset(source, global_batch: int, seed: int, *, process_index: int | None = None,
                 process_count: int | None = None, num_threads: int = 2) -> grain.IterDataset:
  """Shuffled (reshuffled each epoch), repeated, per-process sliced and batched dataset of host dicts."""
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  if global_batch % pc:
    raise ValueError(f"global batch {global_batch} is not divisible by {pc} processes")
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
  ds = ds[pi::pc].batch(global_batch // pc, drop_remainder=True)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2))


def attach_text(batch: dict, text_encoder) -> dict:
  """Adds 'text_tokens' and 'text_mask' for the batch's captions (cached: each distinct prompt encoded once)."""
  tokens, mask = text_encoder.encode([str(c) for c in batch["caption"]])
  return {**batch, "text_tokens": tokens.astype(np.float32), "text_mask": mask.astype(bool)}


def to_global(batch: dict, shardings: dict) -> dict:
  """Host-local numpy batch -> global jax arrays (one per key in `shardings`)."""
  return {k: jax.make_array_from_process_local_data(s, np.asarray(batch[k])) for k, s in shardings.items()}
