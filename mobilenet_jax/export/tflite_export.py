"""LiteRT (TFLite) export, float32 or full-integer int8: the route LiteRT documents for JAX.

JAX -> TensorFlow with `jax2tf` (the program as StableHLO in one XlaCallModule op) -> the TFLite
converter, which legalises StableHLO to TFLite builtins: CONV_2D and DEPTHWISE_CONV_2D with their
bias and ReLU/ReLU6 fused, HARD_SWISH, MEAN/SUM, FULLY_CONNECTED; all of them run in XNNPACK.

The batch is fixed: with a batch-polymorphic program the converter keeps shape arithmetic
(BROADCAST_TO, MAXIMUM/MINIMUM instead of fused activations) and the model is slower, so "dynamic"
is refused. LiteRT still resizes a fixed-batch model's input when no reshape pins the batch (V1, V2).

int8 is post-training full-integer quantization (Jacob et al. 2018, "Quantization and Training of
Neural Networks for Efficient Integer-Arithmetic-Only Inference", section 2): weights int8 per output
channel, activations int8 per tensor with ranges calibrated on representative images, float32
logits out. The input is float32 (quantized inside the model) or uint8 pixels 0..255, normalised
inside the model by the weights' input normalisation.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Iterable

import numpy as np

from mobilenet_jax.export.program import DYNAMIC, Program

INT8_INPUTS = ("float32", "uint8")


def _concrete_function(program: Program):
  import tensorflow as tf
  from jax.experimental import jax2tf

  check_batch(program.batch)
  shape = tuple(program.input_spec.shape)
  converted = jax2tf.convert(program.function, with_gradient=False)
  function = tf.function(converted, autograph=False,
                         input_signature=[tf.TensorSpec(shape, tf.float32, name="images")])
  return function, function.get_concrete_function()


def check_batch(batch) -> None:
  if batch == DYNAMIC:
    raise ValueError("TFLite export needs a fixed batch (--batch=N, e.g. 1): the TFLite converter "
                     "cannot fuse the activations of a batch-polymorphic JAX program")


def _quiet_converter_logs() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def program_to_tflite(program: Program) -> bytes:
  """The program as a float32 `.tflite` flatbuffer."""
  _quiet_converter_logs()
  import tensorflow as tf

  function, concrete = _concrete_function(program)
  return tf.lite.TFLiteConverter.from_concrete_functions([concrete], function).convert()


def check_int8_input(input_type: str, pixel_normalization) -> None:
  if input_type not in INT8_INPUTS:
    raise ValueError(f"int8 input type must be one of {INT8_INPUTS}, got {input_type!r}")
  if input_type == "uint8" and pixel_normalization is None:
    raise ValueError("input_type='uint8' takes 0..255 pixels: give normalization= (the weights' "
                     "input normalisation: 'inception', 'imagenet' or 'unit')")
  if input_type != "uint8" and pixel_normalization is not None:
    raise ValueError("normalization= applies to input_type='uint8' only (a float32 input is "
                     "normalised already)")


def program_to_tflite_int8(program: Program, calibration: Callable[[], Iterable[np.ndarray]],
                           input_type: str = "float32") -> bytes:
  """Full-integer int8 `.tflite`: `calibration()` yields float32 batches shaped like the program's
  input (normalised images, or 0..255 pixels when the program normalises them itself).

  `input_type` "uint8" needs a program that takes 0..255 pixels (`pixel_normalization`): its
  quantization is then scale 1, zero point 0 (the pixels themselves) when the calibration pixels
  span 0..255, as photographs do.
  """
  check_int8_input(input_type, program.pixel_normalization)
  _quiet_converter_logs()
  import tensorflow as tf

  batch = program.input_spec.shape[0]

  def representative() -> Iterable[list[np.ndarray]]:
    count = 0
    for images in calibration():
      images = np.asarray(images, np.float32)
      if images.ndim != 4 or images.shape[1:] != tuple(program.input_spec.shape[1:]):
        raise ValueError(f"calibration images must be [N, {program.resolution}, "
                         f"{program.resolution}, 3], got {images.shape}")
      for start in range(0, len(images) - batch + 1, batch):
        count += 1
        yield [images[start:start + batch]]
    if not count:
      raise ValueError(f"calibration gave no batch of {batch} images")

  function, concrete = _concrete_function(program)
  converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], function)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = representative
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  converter.inference_input_type = tf.uint8 if input_type == "uint8" else tf.float32
  converter.inference_output_type = tf.float32
  with warnings.catch_warnings():
    # With a float32 input the converter notes that it has no statistics for a quantized input.
    warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
    return converter.convert()

