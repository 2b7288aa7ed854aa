"""BatchNorm statistics for weights whose BatchNorm was folded away (TFLite files), before fine-tuning.

A `.tflite` MobileNet has each BatchNorm folded into its convolution (kernel * gamma / sqrt(var + eps)
plus a bias), so its converted checkpoint carries identity statistics (mean 0, variance 1) with the
folded bias as offset. That network computes the released function in inference mode, but in
training mode BatchNorm normalises with the batch's own statistics, which are far from 0 and 1: the
pretrained function is lost at the first step (a converted MobileNetV2 that classifies ImageNet images
well in inference mode classifies almost none right in training mode).

`estimate_batch_norm_statistics` measures the true mean and variance of every BatchNorm's input on
a sample of the training images (in inference mode, where the network is the released one) and sets
them as the running statistics, changing scale and offset so that the inference-mode function is
unchanged: with statistics (m, v) and parameters (g, b) replaced by (m', v') and
g' = g sqrt(v' + eps) / sqrt(v + eps), b' = b + g (m' - m) / sqrt(v + eps),
g' (x - m') / sqrt(v' + eps) + b' = g (x - m) / sqrt(v + eps) + b for every x. Training-mode
BatchNorm on such images then computes nearly the same function as the released network.
"""

from __future__ import annotations

from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util


def _is_batch_norm(module: nn.Module, method: str) -> bool:
  return isinstance(module, nn.BatchNorm) and method == "__call__"


def _input_moments(model, variables: dict[str, Any], images: jax.Array, epsilon: float
                   ) -> dict[str, tuple[jax.Array, jax.Array]]:
  """{'path/of/norm': (mean, variance)} of each BatchNorm's input over the batch and positions."""
  _, state = model.apply(variables, images, train=False, capture_intermediates=_is_batch_norm,
                         mutable=["intermediates"])
  outputs = traverse_util.flatten_dict(state["intermediates"], sep="/")
  params = traverse_util.flatten_dict(variables["params"], sep="/")
  stats = traverse_util.flatten_dict(variables["batch_stats"], sep="/")
  moments = {}
  for key, (y,) in outputs.items():
    path = key.removesuffix("/__call__")
    scale, bias = params[f"{path}/scale"], params[f"{path}/bias"]
    mean, var = stats[f"{path}/mean"], stats[f"{path}/var"]
    # The norm's input from its output: x = (y - b) sqrt(v + eps) / g + m (g = 0: nothing to learn).
    safe_scale = jnp.where(scale == 0, 1.0, scale)
    x = (y.astype(jnp.float32) - bias) * jnp.sqrt(var + epsilon) / safe_scale + mean
    axes = tuple(range(x.ndim - 1))
    moments[path] = (jnp.mean(x, axes), jnp.var(x, axes))
  return moments


def estimate_batch_norm_statistics(model, variables: dict[str, Any],
                                   batches: Iterable[np.ndarray]) -> dict[str, Any]:
  """`variables` with every BatchNorm's running statistics measured on `batches` of images (NHWC,
  preprocessed as for training) and its scale and offset changed to keep the same inference-mode
  function (module docstring).

  `model` must use `nn.BatchNorm` with the network's epsilon (`model.bn_epsilon`), e.g. a network
  built with XLA's own layers; batches of equal size.
  """
  epsilon = model.bn_epsilon
  moments_fn = jax.jit(lambda v, x: _input_moments(model, v, x, epsilon))
  chunks = [jax.device_get(moments_fn(variables, jnp.asarray(images))) for images in batches]
  if not chunks:
    raise ValueError("estimate_batch_norm_statistics needs at least one batch of images")
  params = traverse_util.flatten_dict(jax.device_get(variables["params"]), sep="/")
  stats = traverse_util.flatten_dict(jax.device_get(variables["batch_stats"]), sep="/")
  for path in chunks[0]:
    means = np.stack([np.asarray(c[path][0], np.float64) for c in chunks])
    new_mean = means.mean(0)  # equal batches: the pooled mean, and variance within plus between
    new_var = np.stack([np.asarray(c[path][1], np.float64) for c in chunks]).mean(0) + means.var(0)
    scale = np.asarray(params[f"{path}/scale"], np.float64)
    mean = np.asarray(stats[f"{path}/mean"], np.float64)
    std = np.sqrt(np.asarray(stats[f"{path}/var"], np.float64) + epsilon)
    dtype = params[f"{path}/scale"].dtype
    params[f"{path}/scale"] = (scale * np.sqrt(new_var + epsilon) / std).astype(dtype)
    params[f"{path}/bias"] = (params[f"{path}/bias"] + scale * (new_mean - mean) / std).astype(dtype)
    stats[f"{path}/mean"] = new_mean.astype(stats[f"{path}/mean"].dtype)
    stats[f"{path}/var"] = new_var.astype(stats[f"{path}/var"].dtype)
  return {**variables, "params": traverse_util.unflatten_dict(params, sep="/"),
          "batch_stats": traverse_util.unflatten_dict(stats, sep="/")}
