"""Writes a Keras applications MobileNet with random weights as a float `.tflite` file.

    python tests/keras_tflite_export.py mobilenet_v3_small 0.75 96 OUT.tflite

Run in a process of its own: the TFLite converter needs Keras on the TensorFlow backend, while the
tests run Keras on JAX. BatchNorm statistics and offsets are random too, so folding them matters.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

CONSTRUCTORS = {"mobilenet": "MobileNet", "mobilenet_v2": "MobileNetV2",
                "mobilenet_v3_small": "MobileNetV3Small", "mobilenet_v3_large": "MobileNetV3Large"}


def main(name: str, alpha: str, resolution: str, out: str, classes: int = 10) -> None:
  options = dict(weights=None, alpha=float(alpha), input_shape=(int(resolution),) * 2 + (3,),
                 classes=classes)
  if name.startswith("mobilenet_v3"):
    options["include_preprocessing"] = True   # a Rescaling layer inside: the file takes 0..255
  model = getattr(keras.applications, CONSTRUCTORS[name])(**options)
  rng = np.random.RandomState(0)
  for variable in model.weights:
    path = variable.path
    if "moving_variance" in path:
      variable.assign(rng.uniform(0.5, 2.0, variable.shape))
    elif "moving_mean" in path or "beta" in path:
      variable.assign(rng.normal(0.0, 0.2, variable.shape))
    elif "gamma" in path:
      variable.assign(rng.uniform(0.5, 1.5, variable.shape))
  with open(out, "wb") as f:
    f.write(tf.lite.TFLiteConverter.from_keras_model(model).convert())


if __name__ == "__main__":
  main(*sys.argv[1:])
