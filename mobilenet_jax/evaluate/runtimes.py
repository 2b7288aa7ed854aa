"""Logits for prepared images: our JAX model, or a `.tflite` file run by LiteRT itself.

Both take the same normalised float32 images. LiteRT gets them in the file's own input type
(quantized with the input's scale and zero point for uint8/int8 files) and gives back the
tensor that feeds the file's softmax, dequantized: its logits, whose ranking is finer than that of
the 8-bit softmax output. The background logit of a 1001-class file is dropped, as our model drops
that class.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np


class JaxClassifier:
  """`model.apply(variables, images, train=False)`, jitted once for a fixed batch size; with
  `eight_bit` (a quantized file's `TfliteModel`), with the file's 8-bit activations
  (`convert.eight_bit_apply`)."""

  def __init__(self, model: Any, variables: Any, batch_size: int, eight_bit: Any = None):
    import jax

    from mobilenet_jax.convert.tflite_eight_bit import eight_bit_apply

    self.batch_size = batch_size
    self.variables = jax.device_put(variables)
    self._apply = (eight_bit_apply(model, eight_bit) if eight_bit is not None else
                   jax.jit(lambda v, x: model.apply(v, x, train=False)))

  def __call__(self, images: np.ndarray) -> np.ndarray:
    n = len(images)
    padded = np.zeros((self.batch_size, *images.shape[1:]), np.float32)
    padded[:n] = images
    return np.asarray(self._apply(self.variables, padded))[:n]


class LiteRTClassifier:
  """A `.tflite` file run by LiteRT (`ai-edge-litert`), one image at a time."""

  def __init__(self, tflite_model: Any, path: str, num_threads: int | None = None):
    try:
      from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
      raise ImportError("--runtime=litert needs LiteRT: pip install ai-edge-litert") from e
    # Keeping every tensor lets us read the logits before the softmax (LiteRT warns that this is
    # meant for debugging: it costs memory, which one image at a time does not mind).
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
      self.interpreter = Interpreter(model_path=path, num_threads=num_threads or os.cpu_count(),
                                     experimental_preserve_all_tensors=True)
    self.interpreter.allocate_tensors()
    self.spec = tflite_model.input
    self.logits = tflite_model.logits
    self.background = tflite_model.background
    details = {d["index"]: d for d in self.interpreter.get_tensor_details()}
    self.scale, self.zero_point = details[self.logits]["quantization"]

  def __call__(self, images: np.ndarray) -> np.ndarray:
    out = []
    for image in images:
      self.interpreter.set_tensor(self.spec.index, self.spec.from_model_input(image[None]))
      self.interpreter.invoke()
      logits = self.interpreter.get_tensor(self.logits).reshape(-1)
      if self.scale:
        logits = (logits.astype(np.float32) - self.zero_point) * self.scale
      out.append(logits[1:] if self.background else logits)
    return np.stack(out).astype(np.float32)
