"""The reference libraries' own deployment files, as their users make them, for the benchmark.

    python -m mobilenet_jax.tools.peer_exports keras mobilenet_v2 224 OUT.tflite
    python -m mobilenet_jax.tools.peer_exports keras_int8 mobilenet_v2 224 OUT.tflite
    python -m mobilenet_jax.tools.peer_exports torchvision mobilenet_v2 224 OUT.onnx

keras: `keras.applications` (random weights, BatchNorm statistics of 8 random images, as ours)
through `tf.lite.TFLiteConverter.from_keras_model`, on Keras's TensorFlow backend (so in a process
of its own: the benchmark runs Keras on JAX).
keras_int8: the same, full-integer post-training quantization as TensorFlow documents it
(`Optimize.DEFAULT`, a representative dataset, `TFLITE_BUILTINS_INT8`; float input and output),
calibrated on those 8 images.
torchvision: `torch.onnx.export` (its default exporter) with a dynamic batch; V1 is timm's.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np

from mobilenet_jax.tools.workload import NUM_CLASSES, keras_model, torch_model


def keras_tflite(name: str, resolution: int, out: str, int8: bool = False) -> None:
  """Writes Keras's float (or int8) `.tflite` of `name`; runs in a subprocess with the TensorFlow
  backend."""
  env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
  subprocess.run([sys.executable, "-m", "mobilenet_jax.tools.peer_exports",
                  "keras_int8" if int8 else "keras", name, str(resolution), out], env=env,
                 check=True, stdout=subprocess.DEVNULL)


def _keras_tflite_here(name: str, resolution: int, out: str, int8: bool = False) -> None:
  import keras
  import tensorflow as tf

  if keras.backend.backend() != "tensorflow":
    raise RuntimeError("the Keras TFLite export needs KERAS_BACKEND=tensorflow")
  model = keras_model(name, resolution, NUM_CLASSES)
  images = np.random.default_rng(0).standard_normal((8, resolution, resolution, 3))
  images = images.astype(np.float32)
  # BatchNorm statistics of the images' activations, as ours get them (tools/random_weights.py):
  # a trained network's ranges, which XNNPACK's int8 kernels depend on.
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.momentum = 0.0
  model(images, training=True)
  converter = tf.lite.TFLiteConverter.from_keras_model(model)
  if int8:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None]] for x in images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  with open(out, "wb") as f:
    f.write(converter.convert())


def torchvision_onnx(name: str, resolution: int, out: str) -> None:
  """Writes torchvision's (timm's for V1) ONNX export of `name`, batch dynamic."""
  import torch

  model = torch_model(name, NUM_CLASSES)
  images = torch.zeros(1, 3, resolution, resolution)
  torch.onnx.export(model.eval(), (images,), out, input_names=["images"], output_names=["logits"],
                    dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False,
                    verbose=False)


if __name__ == "__main__":
  library, model_name, size, path = sys.argv[1:]
  makers = {"keras": _keras_tflite_here, "torchvision": torchvision_onnx,
            "keras_int8": functools.partial(_keras_tflite_here, int8=True)}
  makers[library](model_name, int(size), path)
