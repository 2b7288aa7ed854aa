"""The reference libraries' own deployment files, as their users make them, for the benchmark.

    python -m mobilenet_jax.tools.peer_exports keras mobilenet_v2 224 OUT.tflite
    python -m mobilenet_jax.tools.peer_exports torchvision mobilenet_v2 224 OUT.onnx

keras: `keras.applications` (random weights) through `tf.lite.TFLiteConverter.from_keras_model`, on
Keras's TensorFlow backend (so in a process of its own: the benchmark runs Keras on JAX).
torchvision: `torch.onnx.export` (its default exporter) with a dynamic batch; V1 is timm's.
"""

from __future__ import annotations

import os
import subprocess
import sys

def keras_tflite(name: str, resolution: int, out: str) -> None:
  """Writes Keras's float `.tflite` of `name`; runs in a subprocess with the TensorFlow backend."""
  env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
  subprocess.run([sys.executable, "-m", "mobilenet_jax.tools.peer_exports", "keras", name,
                  str(resolution), out], env=env, check=True, stdout=subprocess.DEVNULL)


def _keras_tflite_here(name: str, resolution: int, out: str) -> None:
  import keras
  import tensorflow as tf

  from mobilenet_jax.tools.benchmark import KERAS_MODELS

  if keras.backend.backend() != "tensorflow":
    raise RuntimeError("the Keras TFLite export needs KERAS_BACKEND=tensorflow")
  options = dict(weights=None, input_shape=(resolution, resolution, 3), classes=1000,
                 classifier_activation=None)
  if name.startswith("mobilenet_v3"):
    options["include_preprocessing"] = False
  model = getattr(keras.applications, KERAS_MODELS[name])(**options)
  with open(out, "wb") as f:
    f.write(tf.lite.TFLiteConverter.from_keras_model(model).convert())


def torchvision_onnx(name: str, resolution: int, out: str) -> None:
  """Writes torchvision's (timm's for V1) ONNX export of `name`, batch dynamic."""
  import torch

  from mobilenet_jax.tools.benchmark import TORCH_MODELS

  library, constructor = TORCH_MODELS[name]
  if library == "timm":
    import timm
    model = timm.create_model(constructor, num_classes=1000)
  else:
    import torchvision
    model = getattr(torchvision.models, constructor)(num_classes=1000)
  images = torch.zeros(1, 3, resolution, resolution)
  torch.onnx.export(model.eval(), (images,), out, input_names=["images"], output_names=["logits"],
                    dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False,
                    verbose=False)


if __name__ == "__main__":
  library, model_name, size, path = sys.argv[1:]
  {"keras": _keras_tflite_here, "torchvision": torchvision_onnx}[library](model_name, int(size), path)
