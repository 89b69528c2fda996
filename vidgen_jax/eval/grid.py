"""A labelled PNG contact sheet of evaluated videos: one row per prompt, every frame of each sample, and under
each sample the evaluator's reading (green when colour, shape and motion all match the prompt, red if not,
with the mismatching attributes in capitals)."""
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vidgen_jax.eval import evaluator as ev
from vidgen_jax.eval import metrics

_OK, _BAD, _TEXT = (80, 220, 80), (240, 80, 80), (230, 230, 230)


def reading_text(reading: dict, prompt: str) -> tuple[str, bool]:
  want = metrics.prompt_labels(prompt)
  parts = [reading[a] if reading[a] == want[a] else reading[a].upper() for a in ev.ATTRIBUTES]
  return " ".join(parts), all(reading[a] == want[a] for a in ev.ATTRIBUTES)


def labelled_grid(videos, prompts, readings, splits=None, max_per_prompt: int = 4, scale: int = 2,
                  label_width: int = 250) -> Image.Image:
  """PIL image; videos (N, T, H, W, 3) uint8 with prompts and evaluator readings in the same order."""
  videos = np.asarray(videos)
  if not (len(videos) == len(prompts) == len(readings)):
    raise ValueError(f"{len(videos)} videos, {len(prompts)} prompts, {len(readings)} readings")
  rows: dict[str, list[int]] = {}
  for i, p in enumerate(prompts):
    rows.setdefault(p, [])
    if len(rows[p]) < max_per_prompt:
      rows[p].append(i)
  n, t, h, w, _ = videos.shape
  font = ImageFont.load_default()
  line = 12
  tile_w, tile_h = t * w * scale + 8, h * scale + line + 6
  cols = max(len(v) for v in rows.values())
  sheet = Image.new("RGB", (label_width + cols * tile_w, len(rows) * tile_h), (24, 24, 24))
  draw = ImageDraw.Draw(sheet)
  for r, (prompt, idx) in enumerate(rows.items()):
    y = r * tile_h
    tag = f" [{splits[idx[0]]}]" if splits is not None else ""
    draw.text((4, y + h * scale // 2 - line), prompt, fill=_TEXT, font=font)
    draw.text((4, y + h * scale // 2), tag.strip(), fill=(160, 160, 160), font=font)
    for c, i in enumerate(idx):
      x = label_width + c * tile_w
      strip = np.concatenate(list(videos[i]), axis=1)
      strip = np.repeat(np.repeat(strip, scale, 0), scale, 1)
      sheet.paste(Image.fromarray(strip), (x, y + 2))
      text, ok = reading_text(readings[i], prompt)
      draw.text((x, y + h * scale + 3), text, fill=_OK if ok else _BAD, font=font)
  return sheet
