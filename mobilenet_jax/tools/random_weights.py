"""Random weights whose activations have a trained network's ranges, for speed measurements.

Freshly initialised BatchNorm statistics (mean 0, variance 1) leave a random MobileNet's
activations shrinking or growing by orders of magnitude from layer to layer. Runtimes with
integer kernels care: XNNPACK takes an int8 ADD or MUL only when its input and output scales are
within a bounded ratio of each other, so a random network's int8 file runs part of its layers in
TFLite's reference kernels where a trained one would not. Setting every BatchNorm's statistics to
those of its own input on a batch of images (what a trained network's running averages are on its
data) gives each normalised activation unit scale, as in training.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from mobilenet_jax.models.layers import ConvNormAct


def with_batch_statistics(model: Any, variables: Mapping[str, Any], images: np.ndarray
                          ) -> dict[str, Any]:
  """`variables` with each BatchNorm's `mean` and `var` set to its input's statistics on `images`
  (float32 NHWC, as the model takes them); the parameters are unchanged."""
  one_pass = model.clone(bn_momentum=0.0, dropout_rate=0.0, drop_path_rate=0.0, 
                            conv_norm_act=ConvNormAct)
  _, updated = jax.jit(lambda v, x: one_pass.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, np.asarray(images, np.float32))
  return {**variables, "batch_stats": updated["batch_stats"]}
