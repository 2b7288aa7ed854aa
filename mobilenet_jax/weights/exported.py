"""A `.tflite` file exported by `python -m mobilenet_jax.export`: how LiteRT is to be fed and read.

Its graph (BatchNorm folded, int8-friendly) is not read back into our model; the file's metadata
entry (`convert/tflite_metadata.py`) says which weights it holds and how to prepare its images.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mobilenet_jax.convert.tflite_metadata import ExportInfo
from mobilenet_jax.data.config import PIXEL_NORMALIZATIONS
from mobilenet_jax.weights.recipes import recorded_or_assumed

# TFLite's TensorType numbers of the input types an export writes.
INPUT_DTYPES = {0: np.float32, 3: np.uint8, 9: np.int8}


@dataclasses.dataclass(frozen=True)
class ExportedTflite:
  """What LiteRT needs to score the file (the fields `convert.tflite_source.TfliteModel` has)."""
  input: Any                  # convert.tflite_source.TfliteInput
  logits: int                 # the output tensor: float32 logits
  background: bool = False
  eight_bit: Any = None
  no_eight_bit_reason: str = ("an exported file is run by LiteRT (--runtime=litert); evaluate the "
                              "weights it was exported from for our model's figures")


def read_exported(data: bytes, info: ExportInfo) -> tuple[ExportedTflite, Any, str]:
  """(how to run the file, its eval recipe, where the recipe comes from) of an exported file's
  bytes `data` and its metadata `info`."""
  import tflite

  from mobilenet_jax.convert.tflite_source import TfliteInput

  graph = tflite.Model.GetRootAs(data, 0).Subgraphs(0)
  tensor = graph.Tensors(graph.Inputs(0))
  dtype = INPUT_DTYPES[tensor.Type()]
  shape = tuple(int(d) for d in tensor.ShapeAsNumpy())
  spec = TfliteInput(graph.Inputs(0), shape, dtype, None, None, (1.0, 0.0))
  if info.input == "uint8":   # 0..255 pixels, normalised by the file: x = (p - mean) / std
    if info.normalization not in PIXEL_NORMALIZATIONS:
      raise ValueError("its mobilenet_jax metadata names no pixel normalisation for its uint8 input "
                       "(damaged or edited); export the weights again")
    mean, std = (np.asarray(v, np.float64) for v in PIXEL_NORMALIZATIONS[info.normalization])
    quantization = tensor.Quantization()
    spec = TfliteInput(graph.Inputs(0), shape, dtype, float(quantization.ScaleAsNumpy()[0]),
                       int(quantization.ZeroPointAsNumpy()[0]), (1 / std, -mean / std))
  recipe, how = recorded_or_assumed(info.preprocessing, info.padding, shape[1], "the file")
  return ExportedTflite(spec, graph.Outputs(0)), recipe, how
