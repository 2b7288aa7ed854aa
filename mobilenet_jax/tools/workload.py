"""What every framework of the benchmark runs: the same networks in the reference libraries, built as
their users build them (torchvision's MobileNet V2/V3 and timm's V1, which torchvision lacks;
`keras.applications`), random weights, 1000 classes, and the training step's SGD settings. The
benchmark's runners and `peer_exports.py` both build the networks here."""

from __future__ import annotations

from typing import Any

TORCH_MODELS = {"mobilenet_v1": ("timm", "mobilenetv1_100"),
                "mobilenet_v2": ("torchvision", "mobilenet_v2"),
                "mobilenet_v3_large": ("torchvision", "mobilenet_v3_large"),
                "mobilenet_v3_small": ("torchvision", "mobilenet_v3_small")}
KERAS_MODELS = {"mobilenet_v1": "MobileNet", "mobilenet_v2": "MobileNetV2",
                "mobilenet_v3_large": "MobileNetV3Large", "mobilenet_v3_small": "MobileNetV3Small"}
NUM_CLASSES = 1000
LEARNING_RATE, MOMENTUM = 0.01, 0.9


def torch_model(name: str, num_classes: int) -> Any:
  """The torch module of `name` (torchvision's, timm's for V1), random weights."""
  library, constructor = TORCH_MODELS[name]
  if library == "timm":
    import timm  # pylint: disable=g-import-not-at-top
    return timm.create_model(constructor, num_classes=num_classes)
  import torchvision  # pylint: disable=g-import-not-at-top
  return getattr(torchvision.models, constructor)(num_classes=num_classes)


def keras_model(name: str, resolution: int, num_classes: int) -> Any:
  """The `keras.applications` model of `name`, random weights, logits out (no softmax, and no
  built-in preprocessing for V3)."""
  import keras  # pylint: disable=g-import-not-at-top
  options = dict(weights=None, input_shape=(resolution, resolution, 3), classes=num_classes,
                 classifier_activation=None)
  if name.startswith("mobilenet_v3"):
    options["include_preprocessing"] = False
  return getattr(keras.applications, KERAS_MODELS[name])(**options)
