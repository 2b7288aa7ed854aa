"""BatchNorm folded into the preceding convolution, for inference.

At inference BatchNorm is the affine map `y = (x - mean) * gamma / sqrt(var + eps) + beta` of fixed
statistics, and every BatchNorm of a MobileNet directly follows a bias-free convolution (`ConvNormAct`).
Folding scales each output channel of the kernel by `s = gamma / sqrt(var + eps)` and leaves a bias
`beta - mean * s` (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", section 3.2): one pass over the activations fewer per layer.

    inference_model, inference_variables = fold_batch_norm(model, variables)
    logits = inference_model.apply(inference_variables, images)   # == model.apply(variables, images)

The folded model is the same network with `norm_layer=BiasOnly`: same parameter names, the kernels
rescaled, each `norm` holding just `bias`, and no `batch_stats`. It is for inference only.

`inference_function(model, variables)` adds what else makes CPU inference fast: the folded network
compiled once, run over a large batch in micro-batches whose activations stay in the CPU caches.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.core import meta

from mobilenet_jax.models.builder import MobileNet

Array = jax.Array


class BiasOnly(nn.Module):
  """Per-channel bias on the last axis: what is left of a BatchNorm after folding its scale away."""
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), self.param_dtype)
    x, bias = nn.dtypes.promote_dtype(x, bias, dtype=self.dtype)
    return x + bias


def batch_norm_epsilon(model: MobileNet) -> float:
  """Epsilon of the model's BatchNorm (its `norm_layer` factory or `bn_epsilon`).

  Raises ValueError when the model normalises with something other than BatchNorm, which has
  batch-dependent statistics and cannot be folded.
  """
  if model.norm_layer is None:
    return model.bn_epsilon
  target, keywords = model.norm_layer, {}
  while isinstance(target, functools.partial):
    keywords = {**target.keywords, **keywords}
    target = target.func
  if not (isinstance(target, type) and issubclass(target, nn.BatchNorm)):
    raise ValueError(f"only BatchNorm can be folded into the convolutions; this model uses "
                     f"norm_layer={model.norm_layer!r}; run it unfolded")
  if "epsilon" in keywords:
    return keywords["epsilon"]
  return {f.name: f.default for f in dataclasses.fields(target)}["epsilon"]


def _fold_tree(params: Mapping[str, Any], stats: Mapping[str, Any], epsilon: float
               ) -> tuple[dict[str, Any], int]:
  """Recursively folds every `{conv: {kernel}, norm: {scale, bias}}` pair; returns (tree, count)."""
  out, count = {}, 0
  for name, child in params.items():
    if not isinstance(child, Mapping):
      out[name] = child
      continue
    child_stats = stats.get(name, {})
    if "norm" in child and "conv" in child and "mean" in child_stats.get("norm", {}):
      norm, moments = child["norm"], child_stats["norm"]
      kernel = child["conv"]["kernel"]
      scale = norm.get("scale", jnp.ones_like(moments["var"]))
      shift = norm.get("bias", jnp.zeros_like(moments["mean"]))
      inv_std = (scale.astype(jnp.float32)
                 * jax.lax.rsqrt(moments["var"].astype(jnp.float32) + epsilon))
      folded = dict(child)
      # The output channel is the last kernel axis for full ([k,k,in,out]) and depthwise
      # ([k,k,1,C]) kernels alike.
      folded["conv"] = {**child["conv"],
                        "kernel": (kernel.astype(jnp.float32) * inv_std).astype(kernel.dtype)}
      folded["norm"] = {"bias": (shift.astype(jnp.float32)
                                 - moments["mean"].astype(jnp.float32) * inv_std
                                 ).astype(shift.dtype)}
      out[name] = folded
      count += 1
    else:
      out[name], sub = _fold_tree(child, child_stats, epsilon)
      count += sub
  return out, count


def fold_batch_norm(model: MobileNet, variables: Mapping[str, Any]
                    ) -> tuple[MobileNet, dict[str, Any]]:
  """Returns `(inference_model, inference_variables)` computing the same logits as `model`.

  `variables` must hold `params` and `batch_stats` (as returned by `model.init`). The result has
  only `params`; calling the folded model with `train=True` is not meaningful (no statistics).
  Equal to the unfolded network up to float rounding (about 1e-5 relative in float32).
  """
  if "params" not in variables or "batch_stats" not in variables:
    raise ValueError(f"expected variables with 'params' and 'batch_stats' (from model.init), got "
                     f"collections {sorted(variables)}")
  epsilon = batch_norm_epsilon(model)
  params = meta.unbox(variables["params"])
  params, count = _fold_tree(params, variables["batch_stats"], epsilon)
  if count == 0:
    raise ValueError("found no conv + BatchNorm pair to fold; are these this model's variables?")
  bias_only = functools.partial(BiasOnly, dtype=model.dtype, param_dtype=model.param_dtype)
  return model.clone(norm_layer=bias_only), {"params": params}


# Images per micro-batch on CPU: a batch-8 MobileNetV2 layer (at most 8x112x112x96 floats, 38 MB)
# stays near the 32 MB L3 cache; measured at batch 32, 224x224: V2 198 -> 181 ms, V3-Large
# 165 -> 154 ms, V3-Small unchanged (its activations are small anyway).
CPU_MICRO_BATCH = 8


def resolve_micro_batch(micro_batch: Union[int, str, None] = "auto") -> int:
  """The micro-batch size `inference_function` uses: "auto" is `CPU_MICRO_BATCH` on CPU and 0 (whole
  batches) on accelerators; None is 0; an int >= 0 is itself."""
  if micro_batch == "auto":
    return CPU_MICRO_BATCH if jax.default_backend() == "cpu" else 0
  if micro_batch is not None and (not isinstance(micro_batch, int) or micro_batch < 0):
    raise ValueError(f"micro_batch must be 'auto', None or an int >= 0, got {micro_batch!r}")
  return micro_batch or 0


# Micro-batches computed side by side in each step of the loop on CPU. XLA:CPU runs independent
# operations of a program concurrently on its thread pool, so the small element-wise and depthwise
# fusions of one micro-batch, which use one core each, overlap with those of the other; the
# compiled program holds that many copies of the network. `python experiments/ab_inference.py`
# (batch 32, 224, 2-core CPU, micro-batches of 8 one at a time -> two side by side): V1 1.03x,
# V2 1.02x, V3-Large 1.04x, V3-Small 1.17x faster; two earlier interleaved runs of the same
# comparison: V1 0.98-1.05x, V2 1.02-1.06x, V3-Large 1.05-1.12x, V3-Small 1.15-1.22x.
CPU_SIDE_BY_SIDE = 2


def resolve_side_by_side(side_by_side: Union[int, str] = "auto") -> int:
  """Micro-batches per loop step of `inference_function`: "auto" is `CPU_SIDE_BY_SIDE` on CPU and
  1 on accelerators; an int >= 1 is itself."""
  if side_by_side == "auto":
    return CPU_SIDE_BY_SIDE if jax.default_backend() == "cpu" else 1
  if not isinstance(side_by_side, int) or side_by_side < 1:
    raise ValueError(f"side_by_side must be 'auto' or an int >= 1, got {side_by_side!r}")
  return side_by_side


# Inverted residual blocks with an input at least this high and wide pad it before the expansion
# on CPU (blocks.InvertedResidual.pad_before_expansion), in folded networks: XLA:CPU had written
# the expanded tensor a second time, activated and padded, before the depthwise pass. The expansion
# then also runs on the border pixels (58^2 / 56^2 = 7% more of its multiply-adds at 56x56, 31% at
# 14x14), which pays only where the expanded tensor is large. `python experiments/ab_inference.py
# --layouts 8x2 --changes pad_before_expansion,materialize_stem --rounds 31` (batch 32, 224, 2-core
# CPU; speed with it against without, medians of per-round ratios): V2 1.06x, V3-Large 1.01x,
# V3-Small 0.99x (V1 has no expansion: 1.02x, the noise of this measure); the same run, for
# `materialize_stem`: V1 1.05x, V2 1.06x (not applied to V3: 1.00x, 0.99x). The blocks it applies
# to in V2 and V3 expand with ReLU6 or ReLU; the activation is recomputed for each depthwise tap,
# and with hard-swish a scratch test of one block (56x56, 24 -> 72 channels, 3x3) was 18% slower.
CPU_PAD_BEFORE_EXPANSION_MIN_SIZE = 56


def _resolve_min_size(min_size: Union[int, str], cpu_default: int, name: str) -> int:
  """A min-size option: "auto" is `cpu_default` on CPU and 0 (never) elsewhere; an int >= 0 is itself."""
  if min_size == "auto":
    return cpu_default if jax.default_backend() == "cpu" else 0
  if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 0:
    raise ValueError(f"{name} must be 'auto' or an int >= 0, got {min_size!r}")
  return min_size


def resolve_pad_before_expansion(min_size: Union[int, str] = "auto") -> int:
  """The `pad_before_expansion_min_size` of the folded model: "auto" is
  `CPU_PAD_BEFORE_EXPANSION_MIN_SIZE` on CPU and 0 (never) elsewhere; an int >= 0 is itself."""
  return _resolve_min_size(min_size, CPU_PAD_BEFORE_EXPANSION_MIN_SIZE, "pad_before_expansion")


# Squeeze-and-excite blocks whose depthwise output is at least this high and wide compute it into a
# buffer of its own on CPU (blocks.InvertedResidual.materialize_se_input), in folded networks. The
# SE block reads that output twice, in its pool and in the gating multiply; XLA:CPU fused the whole
# depthwise convolution (25 taps for V3-Large's 28x28 blocks) into the gating pass as well as
# computing it for the pool (found in the compiled HLO; a one-core profile put the gating passes of
# V3-Large's three 28x28 blocks at 5-6 ms each per batch of 32, and under 1 ms with the buffer).
# At 14x14 and 7x7 XLA did not duplicate it and the buffer's conditional only costs.
# `python experiments/ab_inference.py --layouts 8x2 --changes materialize_se_input --rounds 41
# --models v3_large,v3_small` (batch 32, 224, 2-core CPU; with against without): V3-Large 1.08x,
# V3-Small 0.97x (its one such block, 56x56 with 16 channels and 3x3 taps, duplicates little; 1.01x
# with --rounds 61, 1.00x and 1.02x in two scratch runs: no change); V3-Large 1.05-1.06x in two
# scratch runs. A buffer for every SE block (min size 1): V3-Large 1.01x, V3-Small 0.96x.
CPU_MATERIALIZE_SE_INPUT_MIN_SIZE = 28


def resolve_materialize_se_input(min_size: Union[int, str] = "auto") -> int:
  """The `materialize_se_input_min_size` of the folded model: "auto" is
  `CPU_MATERIALIZE_SE_INPUT_MIN_SIZE` on CPU and 0 (never) elsewhere; an int >= 0 is itself."""
  return _resolve_min_size(min_size, CPU_MATERIALIZE_SE_INPUT_MIN_SIZE, "materialize_se_input")


def loop_layout(batch: int, micro_batch: int, side_by_side: int) -> tuple[int, int]:
  """`(micro_batch, side_by_side)` as `inference_function` runs a batch of `batch` images with the
  resolved options: `(0, 1)` when it runs the batch whole; side by side only when a full step of
  `micro_batch * side_by_side` images fits in the batch."""
  if not micro_batch or batch <= micro_batch:
    return 0, 1
  return micro_batch, side_by_side if batch >= micro_batch * side_by_side else 1


def inference_function(model: MobileNet, variables: Mapping[str, Any], *,
                       fold: bool = True, micro_batch: Union[int, str, None] = "auto",
                       side_by_side: Union[int, str] = "auto",
                       pad_before_expansion: Union[int, str] = "auto",
                       materialize_stem: Union[bool, str] = "auto",
                       materialize_se_input: Union[int, str] = "auto"
                       ) -> tuple[Callable[[Any, Array], Array], dict[str, Any]]:
  """Returns `(predict, predict_variables)` with `predict(predict_variables, images) -> logits`.

  predict is jitted; with `fold` BatchNorm is folded into the convolutions first. micro_batch
  "auto" splits batches larger than `CPU_MICRO_BATCH` into micro-batches on CPU (a `lax.map`
  inside the one compiled program) and runs whole batches on accelerators; an int forces a
  micro-batch size, None or 0 disables it. Each step of that loop computes `side_by_side`
  micro-batches independently ("auto": `CPU_SIDE_BY_SIDE` on CPU). With `fold`, blocks whose
  input is at least `pad_before_expansion` pixels high and wide pad it before their expansion
  ("auto": `CPU_PAD_BEFORE_EXPANSION_MIN_SIZE` on CPU, 0 never), and `materialize_stem` ("auto":
  on CPU) stores the stem's output where `builder.stem_materialized_for` says, and squeeze-and-excite
  blocks whose depthwise output is at least `materialize_se_input` pixels high and wide store it
  ("auto": `CPU_MATERIALIZE_SE_INPUT_MIN_SIZE` on CPU, 0 never). The logits are
  those of `model.apply(variables, images)` up to float rounding, for any batch size.
  """
  if materialize_stem not in ("auto", True, False):
    raise ValueError(f"materialize_stem must be 'auto', True or False, got {materialize_stem!r}")
  pad_before_expansion = resolve_pad_before_expansion(pad_before_expansion)
  materialize_se_input = resolve_materialize_se_input(materialize_se_input)
  if fold:
    model, variables = fold_batch_norm(model, variables)
    if materialize_stem == "auto":
      materialize_stem = jax.default_backend() == "cpu"
    model = model.clone(pad_before_expansion_min_size=pad_before_expansion,
                        materialize_stem=materialize_stem,
                        materialize_se_input_min_size=materialize_se_input)
  else:
    variables = dict(variables)
  micro_batch = resolve_micro_batch(micro_batch)
  side_by_side = resolve_side_by_side(side_by_side)

  def apply(variables, images):
    return model.apply(variables, images, train=False)

  def step(variables, chunks):  # [side_by_side, micro_batch, ...] -> logits of each chunk
    return jnp.stack([apply(variables, chunk) for chunk in chunks])

  def predict(variables, images):
    batch = images.shape[0]
    size, count = loop_layout(batch, micro_batch, side_by_side)
    if not size:
      return apply(variables, images)
    per_step = size * count
    whole = batch - batch % per_step
    chunks = images[:whole].reshape(whole // per_step, count, size, *images.shape[1:])
    out = jax.lax.map(lambda chunk: step(variables, chunk), chunks)
    out = out.reshape(whole, *out.shape[3:])
    if whole < batch:
      out = jnp.concatenate([out, apply(variables, images[whole:])])
    return out
  return jax.jit(predict), variables
