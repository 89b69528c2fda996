"""phenaki-pytorch 0.5.0 state dicts -> our Flax C-ViViT, MaskGit and TokenCritic (`cvivit_from_torch`, ...).

Strictness: every torch key is either mapped onto a parameter (or VQ statistic) of the right shape or
dropped for a stated reason (`ignored`: zero `beta` buffers of the bias-less LayerNorms (checked zero), the
empty self-attention `null_kv` (heads, 0, dim_head) (checked against heads/dim_head), self-attention's
never-used `context_norm.gamma`, LFQ's `vq.mask` bit weights (checked), the VQ `initted` flag,
`discr.*`/`vgg.*`); every Flax parameter must be filled. Otherwise a `ConversionError` names every unknown,
unexpected, mismatched and missing key. The EMA-VQ's codebook buffers `vq._codebook.{embed, embed_avg,
cluster_size}` (1, K, ...) go to the 'quantizer_stats' collection (their first row; `unused_steps`, which the
reference does not track, starts at zero).

Layouts (the reference runs channels-first):
  C-ViViT  reference video (B, C, T, H, W) or image (B, C, H, W) in [0, 1]; ours (B, T, H, W, C) or
           (B, H, W, C) (`video_from_torch_layout` / `video_to_torch_layout` move the channel axis).
           Codebook ids (B, S, h, w) in both. T = 1 + k * temporal_patch_size.
  MaskGit  tokens (B, N) int in [0, num_tokens] (num_tokens = mask id) of a (t, h, w) token grid, row-major,
           in both; the reference's `video_patch_shape=(t, h, w)` is our `video_shape=`; the text (B, L, Dc)
           and its mask (B, L) are positional; the reference's cond_drop_prob=1 (every text token masked)
           is our `null=` (B,) True. Logits (B, N, num_tokens).
  Critic   as MaskGit, logits (B, N).

Parameter map (Linear weights transpose to kernels; torch LayerNorm weight -> scale; the transformer blocks
as documented in layers/transformer.py, under each module's name):
  CViViT   spatial_rel_pos_bias.net.{0.0,1.0,2} -> spatial_rel_pos_bias/net_{0,1,2};
           to_patch_emb[_first_frame].{1,2,3} -> .../{norm_in, proj, norm_out};
           {enc,dec}_{spatial,temporal}_transformer.* -> same name; vq.project_{in,out} -> vq/project_{in,out};
           to_pixels[_first_frame].0 -> to_pixels[_first_frame]; vq._codebook.* -> quantizer_stats/vq/*
  MaskGit  token_emb, pos_emb -> trunk/{token_emb, pos_emb}/embedding; continuous_pos_bias.net.* ->
           trunk/continuous_pos_bias/net_*; transformer.* -> trunk/transformer/*; to_logits -> to_logits
  Critic   the same trunk without continuous_pos_bias; to_logits.0 -> to_logits
"""
import dataclasses
import math
import re

import numpy as np

from vidgen_jax.convert.errors import ConversionError
from vidgen_jax.convert.phenaki_checkpoint import REFERENCE, module_state_dict

REQUIRED = "<required>"
# Constructor arguments of the reference and their defaults.
CVIVIT_ARGS = dict(
    dim=REQUIRED, codebook_size=REQUIRED, image_size=REQUIRED, patch_size=REQUIRED, temporal_patch_size=REQUIRED,
    spatial_depth=REQUIRED, temporal_depth=REQUIRED, discr_base_dim=16, dim_head=64, heads=8, channels=3,
    use_vgg_and_gan=True, vgg=None, discr_attn_res_layers=(16,), use_hinge_loss=True, attn_dropout=0.0,
    ff_dropout=0.0, lookup_free_quantization=True, lookup_free_quantization_kwargs=None)
# MaskGit's / TokenCritic's own arguments plus those of their Transformer (**kwargs).
MASKGIT_ARGS = dict(
    dim=REQUIRED, num_tokens=REQUIRED, max_seq_len=REQUIRED, depth=REQUIRED, gradient_shrink_alpha=0.1, heads=8,
    dim_head=64, unconditional=False, attn_dropout=0.0, ff_dropout=0.0, dim_context=None, ff_mult=4, causal=False,
    peg_causal=False)
CRITIC_ARGS = dict(
    dim=REQUIRED, num_tokens=REQUIRED, max_seq_len=REQUIRED, depth=REQUIRED, has_cross_attn=False, heads=8,
    dim_head=64, attn_dropout=0.0, ff_dropout=0.0, dim_context=None, ff_mult=4, causal=False, peg_causal=False,
    attn_num_null_kv=2)
# Accepted and ignored (nothing in the forward pass): the GAN/VGG arguments, MaskGit's dropouts and
# gradient_shrink_alpha (passed on to our MaskGit, which has no dropout).
# vector_quantize_pytorch.LFQ arguments we honour (training-only loss weights) -> our LFQ's field names.
_LFQ_KWARGS = dict(entropy_loss_weight="entropy_weight", commitment_loss_weight="commitment_weight",
                   diversity_gamma="diversity_gamma")


def supports_reference_compat(cls) -> bool:
  """Whether our Flax module class has the `reference_compat` option this import needs."""
  return "reference_compat" in {f.name for f in dataclasses.fields(cls)}


def _compat(cls):
  if not supports_reference_compat(cls):
    raise NotImplementedError(
        f"vidgen_jax.models {cls.__name__} has no reference_compat option: phenaki-pytorch's attention takes "
        "self-attention keys/values from the un-normalised input (and MaskGit's to_logits has a bias), so its "
        "weights cannot reproduce the reference without it")
  return {"reference_compat": True}


def _linear(v):
  if v.ndim != 2:
    raise ValueError(f"a Linear weight is 2-D, got {v.ndim}-D")
  return v.T


def _copy(v):
  return v


def _peg(v):
  if v.ndim != 5 or v.shape[1] != 1:
    raise ValueError("a depthwise Conv3d weight is (C, 1, kt, kh, kw)")
  return v[:, 0].transpose(1, 2, 3, 0)


def _null_kv(v):
  h, n2, d = v.shape
  if n2 % 2:
    raise ValueError("null_kv (heads, 2 * num_null_kv, dim_head) has an odd middle axis")
  return v.reshape(h, n2 // 2, 2, d).transpose(2, 1, 0, 3)


def _first_row(v):
  if v.shape[:1] != (1,):
    raise ValueError("one codebook expected (leading axis 1)")
  return v[0]


def _zero(key, v):
  return None if not np.any(v) else f"{key}: the bias-less LayerNorm's beta buffer is not zero"


def _param(path, fn=_copy):
  return ("param", ("params",) + tuple(path.split("/")), fn)


def _kernel_or_bias(prefix, which):
  return _param(f"{prefix}/kernel", _linear) if which == "weight" else _param(f"{prefix}/bias")


def _transformer_rule(rest, name, heads, dim_head):
  """Rules of phenaki_pytorch.attention.Transformer keys (`rest` after '<name>.')."""
  if rest == "norm_out.gamma":
    return _param(f"{name}/norm_out/gamma")
  if rest == "norm_out.beta":
    return ("ignore", "zero beta buffer of a bias-less LayerNorm", _zero)
  m = re.fullmatch(r"layers\.(\d+)\.(\d)\.(.+)", rest)
  if not m:
    return None
  i, j, tail = m[1], m[2], m[3]
  layer = f"{name}/layer_{i}"
  if j == "0":
    return {"dsconv.weight": _param(f"{layer}_peg/kernel", _peg),
            "dsconv.bias": _param(f"{layer}_peg/bias")}.get(tail)
  if j == "3":
    return {"0.weight": _param(f"{layer}_ff/norm/scale"), "0.bias": _param(f"{layer}_ff/norm/bias"),
            "1.weight": _param(f"{layer}_ff/proj_in/kernel", _linear),
            "4.weight": _param(f"{layer}_ff/proj_out/kernel", _linear)}.get(tail)
  if j not in "12":
    return None
  attn = f"{layer}_attn" if j == "1" else f"{layer}_cross_attn"
  if tail.endswith(".beta"):
    return ("ignore", "zero beta buffer of a bias-less LayerNorm", _zero)
  if j == "1" and tail == "context_norm.gamma":
    return ("ignore", "self-attention's context LayerNorm (never used: no context)", None)
  if j == "1" and tail == "null_kv":
    def empty(key, v, expected=(heads, 0, dim_head)):
      return None if v.shape == expected else (f"{key} {v.shape}: self-attention has no null key/values; "
                                               f"expected the empty {expected} of heads={heads}, dim_head={dim_head}")
    return ("ignore", "self-attention's empty null key/values (heads, 0, dim_head)", empty)
  if tail == "null_kv":
    return _param(f"{attn}/null_kv", _null_kv)
  if tail in ("q_scale", "k_scale"):
    return _param(f"{attn}/{tail}")
  if tail in ("norm.gamma", "context_norm.gamma"):
    return _param(f"{attn}/{tail.split('.')[0]}/gamma")
  if tail in ("to_q.weight", "to_kv.weight", "to_out.weight"):
    return _param(f"{attn}/{tail.split('.')[0]}/kernel", _linear)
  return None


def _position_bias_rule(rest, name, layers=2):
  m = re.fullmatch(r"net\.(\d+)(\.0)?\.(weight|bias)", rest)
  if not m or (m[2] is None) != (int(m[1]) == layers):
    return None
  return _kernel_or_bias(f"{name}/net_{m[1]}", m[3])


def _cvivit_rule(key, kw):
  heads, dim_head = kw["heads"], kw["dim_head"]
  head, _, rest = key.partition(".")
  if head == "spatial_rel_pos_bias":
    return _position_bias_rule(rest, head)
  if head in ("to_patch_emb_first_frame", "to_patch_emb"):
    m = re.fullmatch(r"([123])\.(weight|bias)", rest)
    if not m:
      return None
    if m[1] == "2":
      return _kernel_or_bias(f"{head}/proj", m[2])
    sub = "norm_in" if m[1] == "1" else "norm_out"
    return _param(f"{head}/{sub}/" + ("scale" if m[2] == "weight" else "bias"))
  if head in ("enc_spatial_transformer", "enc_temporal_transformer", "dec_spatial_transformer",
              "dec_temporal_transformer"):
    return _transformer_rule(rest, head, heads, dim_head)
  if head in ("to_pixels_first_frame", "to_pixels"):
    m = re.fullmatch(r"0\.(weight|bias)", rest)
    return _kernel_or_bias(head, m[1]) if m else None
  if head == "vq":
    m = re.fullmatch(r"(project_in|project_out)\.(weight|bias)", rest)
    if m:
      return _kernel_or_bias(f"vq/{m[1]}", m[2])
    if rest == "mask":
      bits = int(math.log2(kw["codebook_size"])) if kw["lookup_free_quantization"] else 0

      def bit_weights(key, v):
        expected = 2 ** np.arange(bits - 1, -1, -1)
        return None if np.array_equal(np.asarray(v), expected) else (
            f"{key} {tuple(v.shape)}: LFQ bit weights of codebook_size={kw['codebook_size']} are "
            f"2^{bits - 1} .. 1")
      return ("ignore", "LFQ's bit weights (recomputed from codebook_size)", bit_weights)
    m = re.fullmatch(r"_codebook\.(embed|embed_avg|cluster_size)", rest)
    if m:
      return ("param", ("quantizer_stats", "vq", m[1]), _first_row)
    if rest == "_codebook.initted":
      return ("ignore", "the codebook's k-means initialisation flag", None)
  return None


def _trunk_rule(key, kw, position_bias):
  heads, dim_head = kw["heads"], kw["dim_head"]
  head, _, rest = key.partition(".")
  if head in ("token_emb", "pos_emb") and rest == "weight":
    return _param(f"trunk/{head}/embedding")
  if head == "continuous_pos_bias" and position_bias:
    return _position_bias_rule(rest, "trunk/continuous_pos_bias")
  if head == "transformer":
    return _transformer_rule(rest, "trunk/transformer", heads, dim_head)
  return None


def _maskgit_rule(key, kw):
  if key in ("to_logits.weight", "to_logits.bias"):
    return _kernel_or_bias("to_logits", key.split(".")[1])
  return _trunk_rule(key, kw, position_bias=True)


def _critic_rule(key, kw):
  if key in ("to_logits.0.weight", "to_logits.0.bias"):
    return _kernel_or_bias("to_logits", key.split(".")[2])
  return _trunk_rule(key, kw, position_bias=False)


# Variables the reference has no counterpart for, and their value.
_DEFAULTED = {("quantizer_stats", "vq", "unused_steps"): lambda shape, dtype: np.zeros(shape, dtype)}


def variables_from_torch(state_dict, rule, kw, target, description):
  """Maps a reference state dict onto `target` (flat {path: ShapeDtypeStruct} of the module's variables).

  Returns (variables {collection: nested numpy dicts}, ignored {torch key: reason}); raises
  `ConversionError` naming unknown keys, keys without a target, shape/value mismatches and unfilled targets.
  """
  from flax import traverse_util
  filled, claimed, ignored = {}, set(), {}
  unknown, unexpected, mismatched = [], [], []
  for key, value in state_dict.items():
    value = np.asarray(value)
    r = rule(key, kw)
    if r is None:
      unknown.append(key)
      continue
    if r[0] == "ignore":
      problem = r[2](key, value) if r[2] else None
      if problem:
        mismatched.append(problem)
      ignored[key] = r[1]
      continue
    _, path, fn = r
    name = "/".join(path)
    if path not in target:
      unexpected.append(f"{key} -> {name}")
      continue
    claimed.add(path)
    try:
      w = fn(value)
    except (ValueError, IndexError) as e:
      mismatched.append(f"{key} {tuple(value.shape)}: {e}")
      continue
    if w.shape != tuple(target[path].shape):
      mismatched.append(f"{key} {tuple(value.shape)} -> {name} {tuple(w.shape)}, but the module has "
                        f"{tuple(target[path].shape)}")
      continue
    if path in filled:
      mismatched.append(f"{key}: {name} is already filled by another key")
      continue
    filled[path] = np.ascontiguousarray(w, dtype=target[path].dtype)
  for path, make in _DEFAULTED.items():
    if path in target and path not in claimed:
      filled[path] = make(target[path].shape, target[path].dtype)
      claimed.add(path)
  missing = ["/".join(p) for p in target if p not in claimed]
  if unknown or unexpected or mismatched or missing:
    raise ConversionError(f"the {REFERENCE} state dict does not fit {description}", unknown=unknown,
                          unexpected=unexpected, mismatched=mismatched, missing=missing)
  return traverse_util.unflatten_dict(filled), ignored


def _abstract(module, *args, **kwargs):
  import flax.linen as nn
  import jax
  from flax import traverse_util
  tree = nn.meta.unbox(jax.eval_shape(lambda k, *a: module.init(k, *a, **kwargs), jax.random.key(0), *args))
  return traverse_util.flatten_dict(tree)


# ----------------------------------------------------------------------------------------------------------
# Constructor arguments

def _layers(sd, prefix):
  idx = {int(m[1]) for k in sd if (m := re.match(re.escape(prefix) + r"layers\.(\d+)\.", k))}
  return max(idx) + 1 if idx else 0


def _require(sd, key, what):
  if key not in sd:
    raise ValueError(f"not a {REFERENCE} {what} state dict: no {key!r} (first keys: {', '.join(list(sd)[:5])})")
  return np.asarray(sd[key])


def _heads_dim_head(sd, prefix, what):
  """(heads, dim_head) from the self-attention's null_kv (heads, 0, dim_head), present in every layer."""
  h, _, d = _require(sd, f"{prefix}layers.0.1.null_kv", what).shape
  return int(h), int(d)


def infer_cvivit_kwargs(state_dict) -> dict:
  """The reference `CViViT(...)` arguments recoverable from a state dict's shapes.

  dim, heads, dim_head, temporal_patch_size, spatial_depth, temporal_depth, lookup_free_quantization and
  codebook_size are exact. Not recoverable: image_size (the weights fit any size) and patch_size / channels
  (only channels * patch_height * patch_width is stored, e.g. 48 = 3 * 4 * 4 = 3 * 2 * 8): pass them.
  """
  sd = state_dict
  what = "CViViT"
  first = _require(sd, "to_patch_emb_first_frame.2.weight", what)
  rest = _require(sd, "to_patch_emb.2.weight", what)
  heads, dim_head = _heads_dim_head(sd, "enc_spatial_transformer.", what)
  kw = dict(dim=int(first.shape[0]), heads=heads, dim_head=dim_head,
            spatial_depth=_layers(sd, "enc_spatial_transformer."),
            temporal_depth=_layers(sd, "enc_temporal_transformer."))
  if first.shape[1] and rest.shape[1] % first.shape[1] == 0:
    kw["temporal_patch_size"] = int(rest.shape[1] // first.shape[1])
  if "vq._codebook.embed" in sd:
    kw.update(lookup_free_quantization=False, codebook_size=int(np.asarray(sd["vq._codebook.embed"]).shape[1]))
  elif "vq.mask" in sd:
    kw.update(lookup_free_quantization=True, codebook_size=2 ** int(np.asarray(sd["vq.mask"]).shape[0]))
  return kw


def infer_maskgit_kwargs(state_dict) -> dict:
  """The reference `MaskGit(...)` arguments (and its Transformer's) from a state dict: all but ff_mult,
  causal, peg_causal (defaults 4, False, False; ff_mult is checked by the shapes) and the dropouts."""
  sd, what = state_dict, "MaskGit"
  emb = _require(sd, "token_emb.weight", what)
  heads, dim_head = _heads_dim_head(sd, "transformer.", what)
  kw = dict(dim=int(emb.shape[1]), num_tokens=int(emb.shape[0]) - 1,
            max_seq_len=int(_require(sd, "pos_emb.weight", what).shape[0]), depth=_layers(sd, "transformer."),
            heads=heads, dim_head=dim_head, unconditional="transformer.layers.0.2.to_kv.weight" not in sd)
  if not kw["unconditional"]:
    kw["dim_context"] = int(np.asarray(sd["transformer.layers.0.2.to_kv.weight"]).shape[1])
  return kw


def infer_critic_kwargs(state_dict) -> dict:
  """The reference `TokenCritic(...)` arguments from a state dict (as `infer_maskgit_kwargs`)."""
  sd, what = state_dict, "TokenCritic"
  emb = _require(sd, "token_emb.weight", what)
  heads, dim_head = _heads_dim_head(sd, "transformer.", what)
  kw = dict(dim=int(emb.shape[1]), num_tokens=int(emb.shape[0]) - 1,
            max_seq_len=int(_require(sd, "pos_emb.weight", what).shape[0]), depth=_layers(sd, "transformer."),
            heads=heads, dim_head=dim_head, has_cross_attn="transformer.layers.0.2.to_kv.weight" in sd)
  if kw["has_cross_attn"]:
    kw["dim_context"] = int(np.asarray(sd["transformer.layers.0.2.to_kv.weight"]).shape[1])
    kw["attn_num_null_kv"] = int(np.asarray(sd["transformer.layers.0.2.null_kv"]).shape[1]) // 2 \
        if "transformer.layers.0.2.null_kv" in sd else 2
  return kw


def _resolve(what, args, inferred, given):
  unknown = sorted(set(given) - set(args))
  if unknown:
    raise ValueError(f"{what} argument(s) {', '.join(unknown)} unknown; the reference's are {', '.join(args)}")
  kw = dict(args)
  kw.update(inferred)
  kw.update({k: v for k, v in given.items() if v is not None})
  missing = [k for k, v in kw.items() if v is REQUIRED]
  if missing:
    raise ValueError(f"{what}: {', '.join(missing)} required (not recoverable from the state dict)")
  return kw


def _pair(v):
  return (int(v), int(v)) if isinstance(v, (int, np.integer)) else tuple(int(x) for x in v)


def resolve_cvivit_kwargs(state_dict, reference_kwargs) -> dict:
  kw = _resolve("CViViT", CVIVIT_ARGS, infer_cvivit_kwargs(state_dict), reference_kwargs)
  kw["image_size"], kw["patch_size"] = _pair(kw["image_size"]), _pair(kw["patch_size"])
  lfq = dict(kw["lookup_free_quantization_kwargs"] or {})
  bad = sorted(set(lfq) - set(_LFQ_KWARGS))
  if bad:
    raise ValueError(f"lookup_free_quantization_kwargs {', '.join(bad)}: not supported (our LFQ takes "
                     f"{', '.join(_LFQ_KWARGS)}: training-only loss weights)")
  if lfq and not kw["lookup_free_quantization"]:
    raise ValueError("lookup_free_quantization_kwargs given for a VQ (lookup_free_quantization=False) model")
  kw["lookup_free_quantization_kwargs"] = lfq
  return kw


def build_cvivit(**kw):
  """Our CViViT (reference_compat=True) for resolved reference arguments."""
  from flax.core import FrozenDict
  from vidgen_jax.models.cvivit import CViViT
  qkw = {_LFQ_KWARGS[k]: v for k, v in (kw["lookup_free_quantization_kwargs"] or {}).items()}
  return CViViT(dim=kw["dim"], image_size=_pair(kw["image_size"]), patch_size=_pair(kw["patch_size"]),
                temporal_patch_size=kw["temporal_patch_size"], spatial_depth=kw["spatial_depth"],
                temporal_depth=kw["temporal_depth"], heads=kw["heads"], dim_head=kw["dim_head"],
                channels=kw["channels"], quantizer="lfq" if kw["lookup_free_quantization"] else "vq",
                codebook_size=kw["codebook_size"], quantizer_kwargs=FrozenDict(qkw) if qkw else None,
                attn_dropout=kw["attn_dropout"], ff_dropout=kw["ff_dropout"], **_compat(CViViT))


def _describe(module, fields):
  return f"{type(module).__name__}(" + ", ".join(f"{f}={getattr(module, f)!r}" for f in fields) + ")"


def cvivit_from_torch(state_dict, **reference_kwargs):
  """Builds our Flax `CViViT` (reference_compat=True) and fills it from a reference CViViT state dict.

  Args:
    state_dict: {torch key: array} of a CViViT (a Phenaki state dict or a path works too: its cvivit part).
    **reference_kwargs: the reference constructor's arguments, by its names: image_size and patch_size
      (ints or (h, w); required: not in the weights), channels (default 3), and optionally dim,
      codebook_size, temporal_patch_size, spatial_depth, temporal_depth, heads, dim_head,
      lookup_free_quantization (read off the weights; given ones must agree), attn_dropout / ff_dropout,
      lookup_free_quantization_kwargs (entropy_loss_weight, commitment_loss_weight, diversity_gamma: our
      LFQ's training loss weights). GAN/VGG arguments are accepted and ignored.

  Returns:
    (module, variables): `module.apply(variables, video)` -> (reconstruction, ids, aux) for channels-last
    video (B, T, H, W, C) in [0, 1] (the reference's (B, C, T, H, W): `video_from_torch_layout`) or an
    image (B, H, W, C) (-> a 1-frame reconstruction (B, 1, H, W, C)); `method=CViViT.encode` /
    `decode_indices` as in models/cvivit.py. variables = {'params': ...} plus, for the VQ, its
    {'quantizer_stats': {'vq': {embed, embed_avg, cluster_size, unused_steps}}}, float32 numpy arrays.
  """
  return cvivit_conversion(state_dict, reference_kwargs)[:2]


def cvivit_conversion(state_dict, reference_kwargs):
  """`cvivit_from_torch` plus what the workdir writer needs: (module, variables, dropped keys, resolved kwargs)."""
  import jax
  import jax.numpy as jnp
  sd = module_state_dict(state_dict, "cvivit")
  kw = resolve_cvivit_kwargs(sd, reference_kwargs)
  module = build_cvivit(**kw)
  (hh, ww), c = kw["image_size"], kw["channels"]
  video = jax.ShapeDtypeStruct((1, 1 + kw["temporal_patch_size"], hh, ww, c), jnp.float32)
  target = _abstract(module, video)
  desc = _describe(module, ("dim", "image_size", "patch_size", "temporal_patch_size", "spatial_depth",
                            "temporal_depth", "heads", "dim_head", "channels", "quantizer", "codebook_size"))
  variables, ignored = variables_from_torch(sd, _cvivit_rule, kw, target, desc)
  return module, variables, ignored, kw


def _check_transformer_args(what, kw):
  if kw["causal"] or kw["peg_causal"]:
    raise ValueError(f"{what}(causal={kw['causal']}, peg_causal={kw['peg_causal']}): our {what} is "
                     "bidirectional with a non-causal PEG, as the reference's default")
  if kw["ff_mult"] != 4:
    raise ValueError(f"{what}(ff_mult={kw['ff_mult']}): our {what} has the reference default 4")


def resolve_maskgit_kwargs(state_dict, reference_kwargs) -> dict:
  kw = _resolve("MaskGit", MASKGIT_ARGS, infer_maskgit_kwargs(state_dict), reference_kwargs)
  _check_transformer_args("MaskGit", kw)
  if not kw["unconditional"] and kw["dim_context"] is None:
    kw["dim_context"] = kw["dim"]        # the Transformer's default
  return kw


def build_maskgit(**kw):
  """Our MaskGit (reference_compat=True) for resolved reference arguments."""
  from vidgen_jax.models.maskgit import MaskGit
  return MaskGit(num_tokens=kw["num_tokens"], dim=kw["dim"], depth=kw["depth"], max_seq_len=kw["max_seq_len"],
                 heads=kw["heads"], dim_head=kw["dim_head"], unconditional=bool(kw["unconditional"]),
                 gradient_shrink_alpha=kw["gradient_shrink_alpha"], **_compat(MaskGit))


def _token_inputs(kw, conditional):
  import jax
  import jax.numpy as jnp
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  text = jax.ShapeDtypeStruct((1, 1, kw["dim_context"]), jnp.float32) if conditional else None
  return tokens, text


def maskgit_from_torch(state_dict, **reference_kwargs):
  """Builds our Flax `MaskGit` (reference_compat=True) and fills it from a reference MaskGit state dict.

  Args:
    state_dict: {torch key: array} of a MaskGit (a Phenaki state dict or a path: its maskgit part).
    **reference_kwargs: the reference's MaskGit / Transformer arguments (dim, num_tokens, max_seq_len,
      depth, heads, dim_head, unconditional, dim_context: all read off the weights; given ones must agree;
      gradient_shrink_alpha; dropouts (ignored: inference); ff_mult, causal, peg_causal must be defaults).

  Returns:
    (module, variables): `module.apply(variables, tokens, text, text_mask, null, video_shape=(t, h, w))` ->
    logits (B, N, num_tokens), for tokens (B, N) int32 in [0, num_tokens] (num_tokens is the mask id),
    text (B, L, dim_context) and text_mask (B, L) (None for an unconditional model), null (B,) bool: True
    masks every text token (the reference's cond_drop_prob=1); N <= max_seq_len.
  """
  return maskgit_conversion(state_dict, reference_kwargs)[:2]


def maskgit_conversion(state_dict, reference_kwargs):
  """`maskgit_from_torch` plus what the workdir writer needs: (module, variables, dropped keys, resolved kwargs)."""
  sd = module_state_dict(state_dict, "maskgit")
  kw = resolve_maskgit_kwargs(sd, reference_kwargs)
  module = build_maskgit(**kw)
  tokens, text = _token_inputs(kw, not kw["unconditional"])
  target = _abstract(module, tokens, text, video_shape=(1, 1, 1))
  desc = _describe(module, ("num_tokens", "dim", "depth", "max_seq_len", "heads", "dim_head", "unconditional"))
  variables, ignored = variables_from_torch(sd, _maskgit_rule, kw, target, desc)
  return module, variables, ignored, kw


def resolve_critic_kwargs(state_dict, reference_kwargs) -> dict:
  kw = _resolve("TokenCritic", CRITIC_ARGS, infer_critic_kwargs(state_dict), reference_kwargs)
  _check_transformer_args("TokenCritic", kw)
  if kw["has_cross_attn"]:
    if kw["attn_num_null_kv"] != 2:
      raise ValueError(f"TokenCritic(attn_num_null_kv={kw['attn_num_null_kv']}): ours has 2 null key/values")
    if kw["dim_context"] is None:
      kw["dim_context"] = kw["dim"]
  return kw


def build_critic(**kw):
  """Our TokenCritic (reference_compat=True) for resolved reference arguments."""
  from vidgen_jax.models.maskgit import TokenCritic
  return TokenCritic(num_tokens=kw["num_tokens"], dim=kw["dim"], depth=kw["depth"], max_seq_len=kw["max_seq_len"],
                     heads=kw["heads"], dim_head=kw["dim_head"], cross_attention=bool(kw["has_cross_attn"]),
                     **_compat(TokenCritic))


def critic_from_torch(state_dict, **reference_kwargs):
  """Builds our Flax `TokenCritic` (reference_compat=True) and fills it from a reference TokenCritic.

  Arguments as `maskgit_from_torch` (has_cross_attn in place of unconditional). Returns (module, variables):
  `module.apply(variables, tokens, text, text_mask, null, video_shape=(t, h, w))` -> (B, N) logits that a
  token is fake (text arguments only with cross-attention).
  """
  return critic_conversion(state_dict, reference_kwargs)[:2]


def critic_conversion(state_dict, reference_kwargs):
  """`critic_from_torch` plus what the workdir writer needs: (module, variables, dropped keys, resolved kwargs)."""
  sd = module_state_dict(state_dict, "critic")
  kw = resolve_critic_kwargs(sd, reference_kwargs)
  module = build_critic(**kw)
  tokens, text = _token_inputs(kw, kw["has_cross_attn"])
  target = _abstract(module, tokens, text, video_shape=(1, 1, 1))
  desc = _describe(module, ("num_tokens", "dim", "depth", "max_seq_len", "heads", "dim_head", "cross_attention"))
  variables, ignored = variables_from_torch(sd, _critic_rule, kw, target, desc)
  return module, variables, ignored, kw
