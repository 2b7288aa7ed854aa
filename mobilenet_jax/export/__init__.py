"""Deploy: a MobileNet as a LiteRT/TFLite (float32 or int8), ONNX or StableHLO file.

    from mobilenet_jax import export
    export.to_tflite(model, variables, "m.tflite", resolution=224)              # LiteRT, XNNPACK
    export.to_tflite_int8(model, variables, "m_int8.tflite", calibration=images)  # full integer
    export.to_onnx(model, variables, "m.onnx")                                   # NCHW input
    export.to_stablehlo(model, variables, "m.stablehlo")                         # jax.export
    export.to_stablehlo(model, variables, "m.mlir")                              # IREE, XLA

    python -m mobilenet_jax.export --weights=DIR --format=tflite-int8 --calibration=IMAGES --out=F

Every format starts from the same program (`program.py`: BatchNorm folded, XLA's layers); the
converters are maintained libraries (jax2tf + the TFLite converter, jax2onnx + onnxscript +
ONNX Runtime's offline optimiser, jax.export), installed by `pip install -e ".[export]"`.
Each function returns the file's bytes and writes them to `out` when given.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np

from mobilenet_jax import extras

extras.require_when_run("mobilenet_jax.export", "train", "export")

from mobilenet_jax.export.constant_factors import fold_constant_factors  # noqa: E402
from mobilenet_jax.export.program import (  # noqa: E402
    DYNAMIC, Batch, Program, deployment_program, parse_batch)

FORMATS = ("tflite", "tflite-int8", "onnx", "stablehlo")
Calibration = Union[np.ndarray, Callable[[], Iterable[np.ndarray]]]


def _write(data: bytes, out: Optional[str]) -> bytes:
  """Writes `data` to `out` atomically: a temporary file beside it, renamed over it once complete
  (as Orbax commits a checkpoint), so a failure never leaves a half-written file."""
  if out is not None:
    import os
    import tempfile

    folder = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(out)}.", suffix=".tmp", dir=folder)
    try:
      with os.fdopen(fd, "wb") as f:
        f.write(data)
      os.chmod(tmp, 0o666 & ~_umask())
      os.replace(tmp, out)
    except BaseException:
      os.unlink(tmp)
      raise
  return data


def _umask() -> int:
  import os
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _require(module: str, what: str) -> None:
  import importlib.util
  if importlib.util.find_spec(module) is None:
    raise ImportError(f"{what} needs the package {module!r} of the 'export' extra: in the "
                      f"mobilenet_jax repository run {extras.install_command('export')}")


def _with_metadata(data: bytes, model: Any, resolution: int, input_type: str,
                   normalization: Optional[str], preprocessing: Optional[Mapping[str, Any]],
                   description: Optional[str]) -> bytes:
  """The file, with what `python -m mobilenet_jax.evaluate` needs to score it."""
  from mobilenet_jax.convert.tflite_metadata import ExportInfo, add_metadata
  return add_metadata(data, ExportInfo(
      description=description or f"{type(model).__name__} {model.num_classes} classes",
      resolution=resolution, input=input_type, normalization=normalization, padding=model.padding,
      preprocessing=dict(preprocessing) if preprocessing else None))


def to_tflite(model: Any, variables: Mapping[str, Any], out: Optional[str] = None, *,
              resolution: int = 224, batch: Batch = 1,
              preprocessing: Optional[Mapping[str, Any]] = None,
              description: Optional[str] = None) -> bytes:
  """Float32 `.tflite` of NHWC images [batch, R, R, 3], normalised as the JAX model takes them.

  `preprocessing` (the weights' eval recipe, `EvalRecipe.to_dict()`) and `description` are recorded
  in the file, for `python -m mobilenet_jax.evaluate --runtime=litert` (the export command records
  them itself).
  """
  from mobilenet_jax.export.tflite_export import check_batch, program_to_tflite
  _require("tensorflow", "TFLite export")
  check_batch(parse_batch(batch))
  data = program_to_tflite(deployment_program(model, variables, resolution, batch))
  return _write(_with_metadata(data, model, resolution, "float32", None, preprocessing,
                               description), out)


def to_tflite_int8(model: Any, variables: Mapping[str, Any], out: Optional[str] = None, *,
                   calibration: Calibration, resolution: int = 224, batch: Batch = 1,
                   input_type: str = "float32", normalization: Optional[str] = None,
                   preprocessing: Optional[Mapping[str, Any]] = None,
                   description: Optional[str] = None) -> bytes:
  """Full-integer int8 `.tflite` (per-channel int8 weights, int8 activations, float32 logits).

  `calibration`: float32 images [N, R, R, 3] (a few hundred representative ones; a hundred is
  enough for MobileNets), or a function returning an iterable of such batches. They are normalised
  images for `input_type="float32"`, and 0..255 pixels for `input_type="uint8"`, whose model
  normalises its input itself with `normalization` ("inception", "imagenet" or "unit", the
  weights' own; required then). `preprocessing` and `description`: as for `to_tflite`.
  """
  from mobilenet_jax.export.tflite_export import (check_batch, check_int8_input,
                                                  program_to_tflite_int8)
  _require("tensorflow", "TFLite export")
  check_batch(parse_batch(batch))
  check_int8_input(input_type, normalization)
  batches = calibration if callable(calibration) else (lambda: [np.asarray(calibration)])
  program = deployment_program(model, variables, resolution, batch, normalization)
  # Divisions by constants (hard-swish's / 6, the pools' / (H * W)) moved into the next layer's
  # weights: in int8 each would be a MUL that XNNPACK does not run (`constant_factors.py`).
  program = dataclasses.replace(program, function=fold_constant_factors(program.function,
                                                                         program.input_spec))
  data = program_to_tflite_int8(program, batches, input_type)
  return _write(_with_metadata(data, model, resolution, input_type, normalization, preprocessing,
                               description), out)


def to_onnx(model: Any, variables: Mapping[str, Any], out: Optional[str] = None, *,
            resolution: int = 224, batch: Batch = DYNAMIC, layout: str = "nchw") -> bytes:
  """ONNX model (opset 18) with input "images" ([batch, 3, R, R] for layout "nchw", [batch, R, R, 3]
  for "nhwc") and output "logits"; batch "dynamic" by default."""
  from mobilenet_jax.export.onnx_export import check_layout, program_to_onnx
  check_layout(layout)
  for module in ("jax2onnx", "onnxscript", "onnxruntime"):
    _require(module, "ONNX export")
  proto = program_to_onnx(deployment_program(model, variables, resolution, batch), layout)
  return _write(proto.SerializeToString(), out)


def to_stablehlo(model: Any, variables: Mapping[str, Any], out: Optional[str] = None, *,
                 resolution: int = 224, batch: Optional[Batch] = None) -> bytes:
  """`jax.export` of the folded network, weights inside: a serialized `jax.export.Exported`
  (`jax.export.deserialize(data).call(images)`; batch "dynamic" by default), or StableHLO MLIR
  text when `out` ends in ".mlir" (for IREE or an XLA server; batch 1 by default: IREE cannot
  compile the grouped convolutions of a dynamic batch, XLA takes either)."""
  from mobilenet_jax.export.stablehlo_export import program_to_stablehlo
  text = out is not None and out.endswith(".mlir")
  if batch is None:
    batch = 1 if text else DYNAMIC
  return _write(program_to_stablehlo(deployment_program(model, variables, resolution, batch),
                                     text), out)


def export(model: Any, variables: Mapping[str, Any], format: str, out: Optional[str] = None,
           **options: Any) -> bytes:
  """`to_<format>` by name: one of FORMATS."""
  functions = {"tflite": to_tflite, "tflite-int8": to_tflite_int8, "onnx": to_onnx,
               "stablehlo": to_stablehlo}
  if format not in functions:
    raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
  return functions[format](model, variables, out, **options)


__all__ = ["FORMATS", "DYNAMIC", "Program", "deployment_program", "export", "to_onnx",
           "to_stablehlo", "to_tflite", "to_tflite_int8"]
