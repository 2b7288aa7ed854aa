"""BatchNorm folded into the preceding convolution, for inference.

At inference BatchNorm is the affine map `y = (x - mean) * gamma / sqrt(var + eps) + beta` of fixed
statistics, and every BatchNorm of a MobileNet directly follows a bias-free convolution (`ConvNormAct`).
Folding scales each output channel of the kernel by `s = gamma / sqrt(var + eps)` and leaves a bias
`beta - mean * s` (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", section 3.2): one pass over the activations fewer per layer.

    inference_model, inference_variables = fold_batch_norm(model, variables)
    logits = inference_model.apply(inference_variables, images)   # == model.apply(variables, images)

The folded model is the same network with `norm_layer=BiasOnly`: same parameter names, the kernels
rescaled, each `norm` holding just `bias`, and no `batch_stats`. It is for inference only
(`mobilenet_jax/inference.py` builds the fast inference program from it; export starts from it too).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.core import meta

from mobilenet_jax.models.builder import MobileNet
from mobilenet_jax.models.layers import unwrap_partial

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
  target, _, keywords = unwrap_partial(model.norm_layer)
  if not (isinstance(target, type) and issubclass(target, nn.BatchNorm)):
    raise ValueError(f"only BatchNorm can be folded into the convolutions; this model uses "
                     f"norm_layer={model.norm_layer!r}; run it unfolded")
  if "epsilon" in keywords:
    return keywords["epsilon"]
  return {f.name: f.default for f in dataclasses.fields(target)}["epsilon"]


def _is_pair(child: Mapping[str, Any], child_stats: Mapping[str, Any]) -> bool:
  return "norm" in child and "conv" in child and "mean" in child_stats.get("norm", {})


def _count_pairs(params: Mapping[str, Any], stats: Mapping[str, Any]) -> int:
  """How many `{conv, norm}` pairs `_fold_tree` folds (from the structure alone)."""
  return sum(1 if _is_pair(child, stats.get(name, {})) else _count_pairs(child, stats.get(name, {}))
             for name, child in params.items() if isinstance(child, Mapping))


def _fold_tree(params: Mapping[str, Any], stats: Mapping[str, Any], epsilon: float
               ) -> dict[str, Any]:
  """Recursively folds every `{conv: {kernel}, norm: {scale, bias}}` pair."""
  out = {}
  for name, child in params.items():
    if not isinstance(child, Mapping):
      out[name] = child
      continue
    child_stats = stats.get(name, {})
    if _is_pair(child, child_stats):
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
    else:
      out[name] = _fold_tree(child, child_stats, epsilon)
  return out


# One program for the whole network: run eagerly, each layer's few operations would compile on
# their own for its shapes (seconds for a MobileNet).
_fold_program = jax.jit(_fold_tree, static_argnums=2)


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
  if not _count_pairs(params, variables["batch_stats"]):
    raise ValueError("found no conv + BatchNorm pair to fold; are these this model's variables?")
  params = _fold_program(params, variables["batch_stats"], epsilon)
  bias_only = functools.partial(BiasOnly, dtype=model.dtype, param_dtype=model.param_dtype)
  return model.clone(norm_layer=bias_only), {"params": params}
