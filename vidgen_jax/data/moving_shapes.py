"""Moving shapes: a procedural text-to-video data set, generated on the fly and deterministic by index.

Every example is one filled object on a black background, described by the caption
`a {colour} {shape} {motion}`, e.g. `a red circle moving left` or `a blue square rotating clockwise`.

* Colours (exact RGB): red, green, blue, yellow, cyan, magenta, white (`COLOURS`).
* Shapes: circle, square, triangle (`SHAPES`). The triangle is equilateral; at angle 0 it points up.
* Motions: eight translations, growing, shrinking, rotating clockwise / counterclockwise (`MOTIONS`).
  Rotations exist only for squares and triangles, so there are 7 * (10 + 12 + 12) = 238 combinations.

Geometry (all of it in units of the frame side, origin at the top-left corner, x to the right, y down):

* `size` is the circle's diameter, the square's side, or the triangle's side. It is drawn uniformly from
  [0.15, 0.25]. For growing / shrinking this is the size at the small end; the object grows from (or shrinks
  to) it by a factor drawn from [1.5, 2], so the large end is at most 0.5.
* A translation moves the centre (the triangle's centroid) a Euclidean distance drawn from [0.25, 0.5]
  along the captioned direction; a diagonal therefore moves distance / sqrt(2) along each axis.
* A rotation turns the object by 60-120 degrees about its centre. Angles are in degrees and grow clockwise
  as seen on screen (y points down). The start angle of a rotating object is uniform over one symmetry
  period (90 degrees for the square, 120 for the triangle); objects that do not rotate are axis aligned.
* Position, size and angle change linearly from frame 0 to frame T - 1. The start position is drawn after
  the motion, so the bounding box of the whole trajectory keeps at least one pixel of black border in
  every frame. This needs `image_size >= 16`.

Rendering supersamples every pixel with 4 x 4 sub-pixels and scales the colour by the coverage, so
sub-pixel motion is visible, edges are anti-aliased, and fully covered (interior) pixels have the exact RGB.

Held-out combinations (`HELDOUT_COMBINATIONS`) never appear in the 'train' split. Each colour is held out
twice, each of the 12 motions at least once, and the shapes 5 / 4 / 5 times (circle / square / triangle);
every colour, shape and motion, and every pair inside each held-out triple, still occurs in training:

    red triangle moving up              red square growing
    green circle moving right           green triangle rotating clockwise
    blue circle moving down and left    blue triangle shrinking
    yellow square moving left           yellow circle moving up and right
    cyan square rotating counterclockwise    cyan circle moving down
    magenta triangle moving down and right   magenta square moving up and left
    white circle growing                white triangle moving left

Each example of `MovingShapes` is a dict of numpy values (so grain can batch it): 'video' uint8 (T, H, W, 3),
'caption' str, 'colour' / 'shape' / 'motion' np.int32 indices into `COLOURS` / `SHAPES` / `MOTIONS`, and
'turn_frame' np.int32 (0, or where a reversal clip turns: `MovingShapes`), and
'params' float32 of length 8 in the order of `PARAM_KEYS`:
(x0, y0, x1, y1, size0, size1, angle0, angle1) = centre at the first / last frame, size at the first / last
frame, angle in degrees at the first / last frame.
"""
import math
import operator
import types

import numpy as np

COLOURS = types.MappingProxyType({
    'red': (255, 0, 0),
    'green': (0, 255, 0),
    'blue': (0, 0, 255),
    'yellow': (255, 255, 0),
    'cyan': (0, 255, 255),
    'magenta': (255, 0, 255),
    'white': (255, 255, 255),
})
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ('circle', 'square', 'triangle')

# Translation directions as (x, y) with y pointing down; normalised to unit length when sampling.
TRANSLATIONS = types.MappingProxyType({
    'moving left': (-1, 0),
    'moving right': (1, 0),
    'moving up': (0, -1),
    'moving down': (0, 1),
    'moving up and left': (-1, -1),
    'moving up and right': (1, -1),
    'moving down and left': (-1, 1),
    'moving down and right': (1, 1),
})
SIZE_MOTIONS = ('growing', 'shrinking')
ROTATIONS = ('rotating clockwise', 'rotating counterclockwise')
MOTIONS = tuple(TRANSLATIONS) + SIZE_MOTIONS + ROTATIONS
ROTATING_SHAPES = ('square', 'triangle')


def opposite_motion(motion):
  """The motion that undoes `motion`: 'moving up and left' -> 'moving down and right', 'growing' ->
  'shrinking', 'rotating clockwise' -> 'rotating counterclockwise'."""
  if motion in TRANSLATIONS:
    ux, uy = TRANSLATIONS[motion]
    return next(m for m, u in TRANSLATIONS.items() if u == (-ux, -uy))
  for pair in (SIZE_MOTIONS, ROTATIONS):
    if motion in pair:
      return pair[1 - pair.index(motion)]
  raise ValueError(f'Unknown motion {motion!r}; expected one of {MOTIONS}.')

HELDOUT_COMBINATIONS = (
    ('red', 'triangle', 'moving up'),
    ('red', 'square', 'growing'),
    ('green', 'circle', 'moving right'),
    ('green', 'triangle', 'rotating clockwise'),
    ('blue', 'circle', 'moving down and left'),
    ('blue', 'triangle', 'shrinking'),
    ('yellow', 'square', 'moving left'),
    ('yellow', 'circle', 'moving up and right'),
    ('cyan', 'square', 'rotating counterclockwise'),
    ('cyan', 'circle', 'moving down'),
    ('magenta', 'triangle', 'moving down and right'),
    ('magenta', 'square', 'moving up and left'),
    ('white', 'circle', 'growing'),
    ('white', 'triangle', 'moving left'),
)
SPLITS = ('train', 'heldout', 'all')
PARAM_KEYS = ('x0', 'y0', 'x1', 'y1', 'size0', 'size1', 'angle0', 'angle1')

SIZE_RANGE = (0.15, 0.25)
SCALE_RANGE = (1.5, 2.0)
TRANSLATION_RANGE = (0.25, 0.5)
ROTATION_RANGE = (60.0, 120.0)
SUPERSAMPLE = 4
MIN_IMAGE_SIZE = 16

_SYMMETRY_PERIOD = {'square': 90.0, 'triangle': 120.0}
# Outward edge normals of the canonical (pointing up, y down) triangle, as angles in degrees.
_TRIANGLE_NORMALS = np.deg2rad(np.array([90.0, -30.0, 210.0]))


def _lookup(value, names, kind):
  """Index of `value` (a name or an index) in `names`."""
  if isinstance(value, str):
    if value not in names:
      raise ValueError(f'Unknown {kind} {value!r}; expected one of {names}.')
    return names.index(value)
  index = operator.index(value)
  if not 0 <= index < len(names):
    raise ValueError(f'{kind} index {index} out of range [0, {len(names)}).')
  return index


def combo_indices(colour, shape, motion):
  """(colour, shape, motion) as indices; accepts names or indices and rejects rotating circles."""
  c = _lookup(colour, COLOUR_NAMES, 'colour')
  s = _lookup(shape, SHAPES, 'shape')
  m = _lookup(motion, MOTIONS, 'motion')
  if MOTIONS[m] in ROTATIONS and SHAPES[s] not in ROTATING_SHAPES:
    raise ValueError(f'{SHAPES[s]!r} cannot be {MOTIONS[m]!r}: rotations are for {ROTATING_SHAPES} only.')
  return c, s, m


def caption(colour, shape, motion):
  """'a {colour} {shape} {motion}' from names or indices, e.g. 'a red circle moving left'."""
  c, s, m = combo_indices(colour, shape, motion)
  return f'a {COLOUR_NAMES[c]} {SHAPES[s]} {MOTIONS[m]}'


def parse_caption(text):
  """Inverse of `caption`: (colour_idx, shape_idx, motion_idx). Case, extra spaces and a final '.' are ok."""
  words = str(text).strip().rstrip('.').lower().split()
  if len(words) < 4 or words[0] != 'a':
    raise ValueError(f'Not a moving-shapes caption (want "a <colour> <shape> <motion>"): {text!r}')
  try:
    return combo_indices(words[1], words[2], ' '.join(words[3:]))
  except ValueError as e:
    raise ValueError(f'Not a moving-shapes caption: {text!r} ({e})') from None


def _all_combinations():
  combos = []
  for c in range(len(COLOUR_NAMES)):
    for s, shape in enumerate(SHAPES):
      for m, motion in enumerate(MOTIONS):
        if motion not in ROTATIONS or shape in ROTATING_SHAPES:
          combos.append((c, s, m))
  return tuple(combos)


_ALL = _all_combinations()
_HELDOUT = frozenset(combo_indices(*names) for names in HELDOUT_COMBINATIONS)


def combinations(split):
  """Sorted list of (colour, shape, motion) index tuples in `split` ('train', 'heldout' or 'all')."""
  if split == 'all':
    return list(_ALL)
  if split == 'heldout':
    return sorted(_HELDOUT)
  if split == 'train':
    return [combo for combo in _ALL if combo not in _HELDOUT]
  raise ValueError(f'Unknown split {split!r}; expected one of {SPLITS}.')


def captions(split):
  """Captions of every combination in `split`, in the order of `combinations(split)`."""
  return [caption(*combo) for combo in combinations(split)]


def parse_motions(motions):
  """None for every motion, else a tuple of motion names from a sequence or a comma-separated string
  ('' and None mean every motion); unknown names raise a ValueError that lists `MOTIONS`."""
  if motions is None:
    return None
  names = [m.strip() for m in motions.split(',')] if isinstance(motions, str) else [str(m).strip() for m in motions]
  names = [m for m in names if m]
  unknown = [m for m in names if m not in MOTIONS]
  if unknown:
    raise ValueError(f'unknown motion(s) {unknown}; choose from {", ".join(MOTIONS)}.')
  return tuple(dict.fromkeys(names)) or None


def parse_motion_weights(weights):
  """None for equal weights, else {motion: weight} from a mapping or a string 'motion=w, motion=w' ('' and None
  mean equal weights); motions not named keep weight 1. Unknown motions and weights that are not finite
  numbers >= 0 raise a ValueError that says which."""
  if not weights:
    return None
  if isinstance(weights, str):
    items = []
    for item in (i.strip() for i in weights.split(',')):
      if not item:
        continue
      name, sep, value = item.rpartition('=')
      if not sep:
        raise ValueError(f'motion weight {item!r} is not "motion=weight" (e.g. "rotating clockwise=4").')
      items.append((name.strip(), value.strip()))
  else:
    items = list(dict(weights).items())
  parse_motions([name for name, _ in items])   # names known
  out = {}
  for name, value in items:
    try:
      weight = float(value)
    except (TypeError, ValueError):
      weight = float('nan')
    if not np.isfinite(weight) or weight < 0:
      raise ValueError(f'weight of {name!r} must be a finite number >= 0, got {value!r}.')
    out[name] = weight
  return out or None


def _check_sizes(image_size, num_frames):
  if operator.index(image_size) < MIN_IMAGE_SIZE:
    raise ValueError(f'image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}.')
  if operator.index(num_frames) < 1:
    raise ValueError(f'num_frames must be >= 1, got {num_frames}.')


def _extent_factor(shape, rotating):
  """Largest distance from the centre to a point of the object, in units of its size."""
  if shape == 'circle':
    return 0.5
  if shape == 'square':
    return math.sqrt(0.5) if rotating else 0.5
  return 1 / math.sqrt(3)  # triangle: circumradius, valid at any angle


def _start(rng, shift, half_extent, margin):
  """Start coordinate so that [start, start + shift] +- half_extent stays inside [margin, 1 - margin]."""
  lo = margin + half_extent - min(shift, 0.0)
  hi = 1 - margin - half_extent - max(shift, 0.0)
  if lo > hi:
    raise ValueError(f'Trajectory does not fit in the frame (extent {half_extent:.3f}, shift {shift:.3f}).')
  return float(rng.uniform(lo, hi))


def sample_params(rng, combo, image_size, num_frames):
  """Draws the geometry of one clip of `combo` = (colour, shape, motion) (names or indices).

  Returns a dict with the int labels 'colour', 'shape', 'motion' and the floats of `PARAM_KEYS` (units of
  the frame side, angles in degrees clockwise). The trajectory spans frames 0 to num_frames - 1 whatever the
  clip length; `image_size` sets the one-pixel black border that the object never touches.
  """
  _check_sizes(image_size, num_frames)
  c, s, m = combo_indices(*combo)
  shape, motion = SHAPES[s], MOTIONS[m]
  size0 = size1 = float(rng.uniform(*SIZE_RANGE))
  if motion in SIZE_MOTIONS:
    large = size0 * float(rng.uniform(*SCALE_RANGE))
    size0, size1 = (size0, large) if motion == 'growing' else (large, size0)
  angle0 = angle1 = 0.0
  if motion in ROTATIONS:
    angle0 = float(rng.uniform(0.0, _SYMMETRY_PERIOD[shape]))
    turn = float(rng.uniform(*ROTATION_RANGE))
    angle1 = angle0 + turn if motion == 'rotating clockwise' else angle0 - turn
  dx = dy = 0.0
  if motion in TRANSLATIONS:
    ux, uy = TRANSLATIONS[motion]
    distance = float(rng.uniform(*TRANSLATION_RANGE)) / math.hypot(ux, uy)
    dx, dy = ux * distance, uy * distance
  half_extent = max(size0, size1) * _extent_factor(shape, motion in ROTATIONS)
  x0 = _start(rng, dx, half_extent, 1 / image_size)
  y0 = _start(rng, dy, half_extent, 1 / image_size)
  return {
      'colour': c, 'shape': s, 'motion': m,
      'x0': x0, 'y0': y0, 'x1': x0 + dx, 'y1': y0 + dy,
      'size0': size0, 'size1': size1, 'angle0': angle0, 'angle1': angle1,
  }


def params_to_vector(params):
  """float32 vector of the `PARAM_KEYS` entries of a params dict."""
  return np.array([params[k] for k in PARAM_KEYS], np.float32)


def params_from_vector(vector, colour, shape, motion):
  """Params dict (as from `sample_params`) from a `PARAM_KEYS` vector and the labels."""
  c, s, m = combo_indices(colour, shape, motion)
  return {'colour': c, 'shape': s, 'motion': m, **{k: float(v) for k, v in zip(PARAM_KEYS, vector)}}


def linear_progress(num_frames):
  """The default trajectory position of each frame: 0 at frame 0 to 1 at the last frame, linearly."""
  return np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)


def reversal_progress(num_frames, turn_frame):
  """Trajectory positions of a reversal clip: the object reaches the start of its trajectory at frame
  `turn_frame` moving backwards, then runs forwards at the same speed (|f - turn_frame| / (num_frames - 1)),
  so frames before `turn_frame` show the opposite motion. Every position stays in [0, 1], inside the
  trajectory that `sample_params` fitted into the frame."""
  if not 0 <= turn_frame < num_frames:
    raise ValueError(f'turn_frame must be in [0, {num_frames}), got {turn_frame}.')
  return np.abs(np.arange(num_frames) - turn_frame) / max(num_frames - 1, 1)


def _frame_values(params, key0, key1, progress):
  return (params[key0] + (params[key1] - params[key0]) * np.asarray(progress)).astype(np.float32)[:, None, None]


def _inside(shape, dx, dy, size, angle):
  """Boolean (T, Y, X) mask of sample offsets (dx, dy) from the centre that lie in the object."""
  if shape == 'circle':
    return dx * dx + dy * dy <= (0.5 * size) ** 2
  cos, sin = np.cos(angle), np.sin(angle)
  if shape == 'square':
    half = 0.5 * size
    return (np.abs(cos * dx + sin * dy) <= half) & (np.abs(cos * dy - sin * dx) <= half)
  inradius = size / (2 * math.sqrt(3))
  mask = None
  for normal in _TRIANGLE_NORMALS:
    # Outward normal rotated by `angle`: angle(n) + angle in y-down coordinates is clockwise on screen.
    ncos, nsin = np.cos(normal + angle), np.sin(normal + angle)
    half_plane = dx * ncos + dy * nsin <= inradius
    mask = half_plane if mask is None else mask & half_plane
  return mask


def _pixel_box(cx, cy, reach, image_size):
  """Integer [x_lo, x_hi) and [y_lo, y_hi) pixel ranges inside the frame that contain the object in every
  frame (empty when it lies wholly outside)."""
  def bounds(centre):
    lo = min(max(int(np.floor(np.min(centre - reach))), 0), image_size)
    hi = min(max(int(np.ceil(np.max(centre + reach))), lo), image_size)
    return lo, hi
  return bounds(cx), bounds(cy)


def render(params, image_size, num_frames, progress=None):
  """uint8 (num_frames, image_size, image_size, 3) video of the object described by `params`.

  progress: optional (num_frames,) position of each frame along the trajectory (0 = the `..0` values of
  `params`, 1 = the `..1` values; others interpolate or extrapolate linearly); default `linear_progress`.
  Frames whose size comes out <= 0 are black."""
  _check_sizes(image_size, num_frames)
  progress = linear_progress(num_frames) if progress is None else np.asarray(progress, np.float64)
  if progress.shape != (num_frames,):
    raise ValueError(f'progress must have shape ({num_frames},), got {progress.shape}.')
  shape = SHAPES[params['shape']]
  cx = _frame_values(params, 'x0', 'x1', progress) * image_size
  cy = _frame_values(params, 'y0', 'y1', progress) * image_size
  size = _frame_values(params, 'size0', 'size1', progress) * image_size
  angle = np.deg2rad(_frame_values(params, 'angle0', 'angle1', progress))
  # Only the pixels that the trajectory can touch are supersampled.
  (x_lo, x_hi), (y_lo, y_hi) = _pixel_box(cx, cy, size * _extent_factor(shape, True) + 1, image_size)
  sub = SUPERSAMPLE
  offsets = (np.arange(sub, dtype=np.float32) + 0.5) / sub
  xs = (np.arange(x_lo, x_hi, dtype=np.float32)[:, None] + offsets).reshape(1, 1, -1)
  ys = (np.arange(y_lo, y_hi, dtype=np.float32)[:, None] + offsets).reshape(1, -1, 1)
  inside = _inside(shape, xs - cx, ys - cy, size, angle)
  count = inside.reshape(num_frames, y_hi - y_lo, sub, x_hi - x_lo, sub).sum(axis=(2, 4), dtype=np.int32)
  rgb = np.array(COLOURS[COLOUR_NAMES[params['colour']]], np.int32)
  full = sub * sub
  video = np.zeros((num_frames, image_size, image_size, 3), np.uint8)
  # Coverage * colour, rounded half up in integers: interior pixels (count == full) get the exact RGB.
  video[:, y_lo:y_hi, x_lo:x_hi] = (2 * count[..., None] * rgb + full) // (2 * full)
  video[size[:, 0, 0] <= 0] = 0
  return video


class MovingShapes:
  """grain random-access source of moving-shapes clips; example i is a pure function of (seed, split, i).

  Example i draws its combination uniformly from `combinations(split)` (only those with one of `motions`
  when given: a subset for curricula and diagnostics) and then its geometry with `sample_params`, both from
  `np.random.default_rng([seed, SPLITS.index(split), i])`. `motion_weights` ({motion: w} or 'motion=w, ...',
  `parse_motion_weights`) draws each combination with probability proportional to its motion's weight
  instead (default 1): the share of a motion's clips is multiplied by w before renormalising, e.g. to
  oversample motions a model learns slowly without dropping the others. Weight 0 leaves a motion out.

  `reversal_prob` > 0 turns that fraction of the clips into reversal clips (`reversal_progress`): the object
  runs backwards along the captioned motion for the first `turn_frame` frames (uniform in [1, num_frames // 2])
  and then forwards, so the caption describes the frames from `turn_frame` on, and the frames before it show
  the opposite motion. That is what a multi-prompt story asks at a scene change (`run_eval.story_prompts`:
  right, left, ...): continue the last frames of one motion with the text's new one. The example's
  'turn_frame' (np.int32, 0 for ordinary clips) says where; a trainer must hand the frames before it to the
  model as known context, never as frames to generate from the caption (`vdm.loss_fn`). The draws of
  ordinary clips are the same as with reversal_prob 0, whose clips are exactly those of earlier versions.
  """

  def __init__(self, num_examples=100_000, image_size=32, num_frames=8, seed=0, split='train', motions=None,
               motion_weights=None, reversal_prob=0.0):
    _check_sizes(image_size, num_frames)
    if operator.index(num_examples) < 1:
      raise ValueError(f'num_examples must be >= 1, got {num_examples}.')
    if operator.index(seed) < 0:
      raise ValueError(f'seed must be >= 0, got {seed}.')
    self.num_examples = int(num_examples)
    self.image_size = int(image_size)
    self.num_frames = int(num_frames)
    self.seed = int(seed)
    self.reversal_prob = float(reversal_prob)
    if not 0.0 <= self.reversal_prob <= 1.0:
      raise ValueError(f'reversal_prob must be a probability in [0, 1], got {reversal_prob}.')
    if self.reversal_prob and self.num_frames < 2:
      raise ValueError(f'reversal clips need num_frames >= 2 (frames before and after the turn), got {num_frames}.')
    self.split = split
    self.motions = parse_motions(motions)
    self._combos = combinations(split)
    if self.motions:
      wanted = {MOTIONS.index(m) for m in self.motions}
      self._combos = [combo for combo in self._combos if combo[2] in wanted]   # every split has every motion
    self.motion_weights = parse_motion_weights(motion_weights)
    self._probs = None   # None: uniform over the combinations, drawn as before weights existed
    if self.motion_weights:
      weights = np.array([self.motion_weights.get(MOTIONS[combo[2]], 1.0) for combo in self._combos])
      if not weights.sum() > 0:
        raise ValueError(f'motion_weights {self.motion_weights} give every motion of {self.motions or "the split"} '
                         'weight 0: nothing left to draw.')
      if not np.all(weights == weights[0]):   # equal weights draw exactly the unweighted examples
        self._probs = weights / weights.sum()

  def __len__(self):
    return self.num_examples

  def __getitem__(self, index):
    index = operator.index(index)
    if index < 0:
      index += self.num_examples
    if not 0 <= index < self.num_examples:
      raise IndexError(f'Index {index} out of range for {self!r}.')
    rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
    combo = self._combos[self._draw(rng)]
    params = sample_params(rng, combo, self.image_size, self.num_frames)
    turn_frame, progress = 0, None
    if self.reversal_prob and rng.random() < self.reversal_prob:   # drawn after the geometry: it is unchanged
      turn_frame = int(rng.integers(1, self.num_frames // 2 + 1))
      progress = reversal_progress(self.num_frames, turn_frame)
    return {
        'video': render(params, self.image_size, self.num_frames, progress),
        'caption': caption(*combo),
        'colour': np.int32(combo[0]),
        'shape': np.int32(combo[1]),
        'motion': np.int32(combo[2]),
        'params': params_to_vector(params),
        'turn_frame': np.int32(turn_frame),
    }

  def _draw(self, rng):
    """Index into the combinations of the next example, the first draw from its stream `rng`."""
    if self._probs is None:
      return int(rng.integers(len(self._combos)))
    return int(rng.choice(len(self._combos), p=self._probs))

  def __repr__(self):
    return (f'MovingShapes(num_examples={self.num_examples}, image_size={self.image_size}, '
            f'num_frames={self.num_frames}, seed={self.seed}, split={self.split!r}, motions={self.motions!r}, '
            f'motion_weights={self.motion_weights!r}, reversal_prob={self.reversal_prob!r})')
