"""Keras applications `MobileNet`, `MobileNetV2`, `MobileNetV3Large`/`Small` -> our model.

Layer names are those of `keras/src/applications/mobilenet{,_v2,_v3}.py`.
Keras pads like TensorFlow's SAME (its stride-2 `ZeroPadding2D` + valid equals SAME on the even maps
the weights were trained on) and uses BatchNorm epsilon 1e-3, read here from the model itself.
Keras itself is not imported: the model's layers and variables are read through their attributes.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

import numpy as np

from mobilenet_jax.convert.assemble import (KERAS, Conversion, ConversionError, Family,
                                            convert_family, to_numpy, width_candidates)
from mobilenet_jax.convert.plan import Unit
from mobilenet_jax.data.eval_recipes import tf_slim

DEFAULT_RESOLUTION = 224   # of a Keras model built without a fixed input size


def _v1_names(unit: Unit) -> tuple[str, Optional[str]]:
  if unit.role == "stem":
    return "conv1", "conv1_bn"
  if unit.role == "classifier":
    return "conv_preds", None
  short = {"depthwise": "dw", "pointwise": "pw"}[unit.role]
  layer = f"conv_{short}_{unit.block + 1}"
  return layer, f"{layer}_bn"


def _v2_names(unit: Unit) -> tuple[str, Optional[str]]:
  fixed = {"stem": ("Conv1", "bn_Conv1"), "last_conv": ("Conv_1", "Conv_1_bn"),
           "classifier": ("predictions", None)}
  if unit.role in fixed:
    return fixed[unit.role]
  if unit.role not in ("expand", "depthwise", "project"):
    raise KeyError(unit.role)
  prefix = "expanded_conv_" if unit.block == 0 else f"block_{unit.block}_"
  return prefix + unit.role, f"{prefix}{unit.role}_BN"


def _v3_names(unit: Unit) -> tuple[str, Optional[str]]:
  fixed = {"stem": ("conv", "conv_bn"), "last_conv": ("conv_1", "conv_1_bn"),
           "head": ("conv_2", None), "classifier": ("logits", None)}
  if unit.role in fixed:
    return fixed[unit.role]
  prefix = "expanded_conv_" if unit.block == 0 else f"expanded_conv_{unit.block}_"
  if unit.role == "se_reduce":
    return prefix + "squeeze_excite_conv", None
  if unit.role == "se_expand":
    return prefix + "squeeze_excite_conv_1", None
  if unit.role not in ("expand", "depthwise", "project"):
    raise KeyError(unit.role)
  return prefix + unit.role, f"{prefix}{unit.role}_bn"


def keras_weights(keras_model: Any) -> dict[str, np.ndarray]:
  """`{'layer/weight': float32 array}` of every variable of a Keras 3 model."""
  return {variable.path: to_numpy(variable.numpy()) for variable in keras_model.weights}


def _batchnorm_epsilon(keras_model: Any) -> float:
  epsilons = {float(layer.epsilon) for layer in keras_model.layers
              if type(layer).__name__ == "BatchNormalization"}
  if len(epsilons) != 1:
    raise ConversionError(f"expected one BatchNormalization epsilon in {keras_model.name}, found "
                          f"{sorted(epsilons)}; our models use one epsilon for every layer")
  return epsilons.pop()


def _alpha_from_name(keras_model: Any) -> tuple[float, ...]:
  # Keras names V1/V2 "mobilenet_0.75_224" / "mobilenetv2_0.35_96" when no name is given.
  match = re.fullmatch(r"mobilenet(?:v2)?_(\d+\.\d+)_\w+", keras_model.name or "")
  return (float(match.group(1)),) if match else ()


def keras_family(keras_model: Any, source: dict[str, np.ndarray]) -> Family:
  """Which Keras application `keras_model` is, from the names of its layers."""
  for layer in keras_model.layers:
    if type(layer).__name__ == "GlobalMaxPooling2D":
      raise ConversionError(f"{keras_model.name} ends in global max pooling; our headless models "
                            "average-pool, so the outputs would differ. Build it with "
                            "pooling='avg' or pooling=None (the weights are the same)")
  if not any(key in source for key in ("conv_pw_13/kernel", "block_16_project/kernel",
                                         "conv_1/kernel")):
    raise ConversionError(
        f"{keras_model.name!r} is not a Keras applications MobileNet, MobileNetV2, "
        "MobileNetV3Large or MobileNetV3Small (none of their layers conv_pw_13, block_16_project, "
        "conv_1 found)")
  options = {"padding": "same", "bn_epsilon": _batchnorm_epsilon(keras_model)}
  if "conv_pw_13/kernel" in source:
    pointwise = source["conv_pw_13/kernel"].shape[-1]
    # Keras's MobileNet pads strided depthwise convolutions (0, 1) then takes 'valid'.
    return Family(f"Keras MobileNet ({keras_model.name})", "mobilenet_v1", _v1_names, KERAS,
                  {**options, "padding": "keras"},
                  width_candidates((*_alpha_from_name(keras_model), pointwise / 1024)),
                  hint="MobileNet with depth_multiplier != 1 (more than one depthwise filter per "
                       "channel) cannot be represented by our mobilenet_v1.")
  if "block_16_project/kernel" in source:
    return Family(f"Keras MobileNetV2 ({keras_model.name})", "mobilenet_v2", _v2_names, KERAS,
                  options, width_candidates(_alpha_from_name(keras_model)))
  if "conv/kernel" in source:
    blocks = sum(bool(re.fullmatch(r"expanded_conv_\d+_project/kernel", k)) for k in source) + 1
    variant = {15: "large", 11: "small"}.get(blocks)
    if variant is None:
      raise ConversionError(f"{keras_model.name} looks like a Keras MobileNetV3 but has {blocks} "
                            "blocks (Large has 15, Small 11)")
    minimal = not any("squeeze_excite" in key for key in source)
    name = f"mobilenet_v3_{variant}" + ("_minimal" if minimal else "")
    return Family(f"Keras MobileNetV3{variant.capitalize()}{' minimalistic' if minimal else ''}",
                  name, _v3_names, KERAS, dict(options, width_rule="tf"), width_candidates(),
                  has_head=True)
  raise ConversionError(f"{keras_model.name!r} has a conv_1 layer but no MobileNetV3 stem 'conv'")


def convert_keras(keras_model: Any, drop_background: bool = True) -> Conversion:
  """Keras model -> `Conversion` (model name, options, variables, eval preprocessing: TF-slim's,
  since Keras' MobileNet weights are the TF-slim checkpoints); see `from_keras`."""
  source = keras_weights(keras_model)
  conversion = convert_family(source, keras_family(keras_model, source), drop_background)
  resolution = keras_model.input_shape[1] or DEFAULT_RESOLUTION
  return dataclasses.replace(conversion, preprocessing=tf_slim(resolution).to_dict())


def from_keras(keras_model: Any, *, drop_background: bool = True, **model_options: Any):
  """A Keras applications MobileNet as `(our Flax module, variables)` computing the same logits.

  Accepts `keras.applications.MobileNet`, `MobileNetV2`, `MobileNetV3Large`, `MobileNetV3Small`:
  any alpha, minimalistic or not, any number of classes, with or without top (a headless V3 has no
  1280/1024 layer: `head_features=0`, `num_classes=0`). The architecture is read from the model.
  Our module outputs logits: Keras' final softmax (`classifier_activation`) is not part of it.
  V3's built-in `Rescaling` (include_preprocessing=True) is not either: feed images scaled to
  [-1, 1] (x / 127.5 - 1), as for V1/V2. `model_options` sets options that do not change the weights
  (compute, dtype, dropout_rate, ...).
  """
  conversion = convert_keras(keras_model, drop_background)
  return conversion.model(**model_options), conversion.variables
