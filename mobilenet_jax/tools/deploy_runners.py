"""The benchmark's deployment rows (float32 inference): our exports (`mobilenet_jax.export`) beside the
reference libraries' own (`peer_exports.py`), in ONNX Runtime and LiteRT with XNNPACK; and the
report of ours against theirs in the same runtime."""

from __future__ import annotations

import argparse
import functools
import os
import time

import numpy as np

from mobilenet_jax.models.registry import create_model
from mobilenet_jax.tools import peer_exports
from mobilenet_jax.tools.jax_runners import init_variables
from mobilenet_jax.tools.random_weights import with_batch_statistics
from mobilenet_jax.tools.timing import Result, Runner
from mobilenet_jax.tools.workload import NUM_CLASSES

EXPORT_FRAMEWORKS = ("ort", "ort_torchvision", "litert", "litert_keras", "litert_int8",
                     "litert_keras_int8")
# (ours, theirs) pairs compared in the report: same runtime, different exporter; int8 vs float
# (ours, and Keras's).
EXPORT_PAIRS = (("ort", "ort_torchvision"), ("litert", "litert_keras"), ("litert_int8", "litert"),
                ("litert_int8", "litert_keras_int8"), ("litert_keras_int8", "litert_keras"))


def _deploy_threads(options: argparse.Namespace) -> int:
  return options.threads or os.cpu_count() or 1


@functools.lru_cache(maxsize=None)
def _export_file(kind: str, name: str, resolution: int, batch: int) -> bytes:
  """The deployment file `kind` of `name` (random weights and data statistics), made once."""
  import tempfile  # pylint: disable=g-import-not-at-top

  from mobilenet_jax import export  # pylint: disable=g-import-not-at-top

  if kind in ("torchvision", "keras", "keras_int8"):
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "model")
      if kind == "torchvision":
        peer_exports.torchvision_onnx(name, resolution, path)
      else:
        peer_exports.keras_tflite(name, resolution, path, int8=kind == "keras_int8")
      with open(path, "rb") as f:
        return f.read()
  model = create_model(name, num_classes=NUM_CLASSES)
  # Random images: calibration for int8, and BatchNorm statistics that give the activations a
  # trained network's ranges (XNNPACK's int8 kernels depend on them: tools/random_weights.py).
  images = np.random.default_rng(0).standard_normal(
      (max(batch, 8), resolution, resolution, 3)).astype(np.float32)
  variables = with_batch_statistics(model, init_variables(model, resolution), images)
  if kind == "onnx":
    return export.to_onnx(model, variables, resolution=resolution)
  if kind == "tflite":
    return export.to_tflite(model, variables, resolution=resolution, batch=batch)
  return export.to_tflite_int8(model, variables, resolution=resolution, batch=batch,
                               calibration=images)


def _check_deploy_mode(framework: str, mode: str, dtype: str) -> None:
  if mode == "train" or dtype != "float32":
    raise ValueError(f"{framework} measures float32 inference only")


def _ort_runner(kind: str, framework: str, name: str, mode: str, batch: int, resolution: int,
                dtype: str, options: argparse.Namespace) -> Runner:
  _check_deploy_mode(framework, mode, dtype)
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  data = _export_file(kind, name, resolution, 0)
  session_options = ort.SessionOptions()
  session_options.intra_op_num_threads = _deploy_threads(options)
  # Two sessions take turns in one process: with ORT's default spin-waiting, one session's idle
  # workers spin on the cores the other needs, and b1 latencies of either swing from run to run;
  # without it they repeat (docs/performance.md).
  session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
  session = ort.InferenceSession(data, session_options, providers=["CPUExecutionProvider"])
  images = np.random.default_rng(0).standard_normal(
      (batch, 3, resolution, resolution)).astype(np.float32)
  feed = {session.get_inputs()[0].name: images}
  return Runner(lambda: session.run(None, feed), time.perf_counter() - start, None, None,
                f"{kind} export, ORT {ort.__version__}, {_deploy_threads(options)} threads")


def _litert_runner(kind: str, framework: str, name: str, mode: str, batch: int, resolution: int,
                   dtype: str, options: argparse.Namespace) -> Runner:
  _check_deploy_mode(framework, mode, dtype)
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  # Keras's files have a dynamic batch (resized here); ours are exported at the batch they run.
  data = _export_file(kind, name, resolution, 0 if kind.startswith("keras") else batch)
  interpreter = Interpreter(model_content=data, num_threads=_deploy_threads(options))
  detail = interpreter.get_input_details()[0]
  if detail["shape"][0] != batch:
    interpreter.resize_tensor_input(detail["index"], [batch, *detail["shape"][1:]])
  interpreter.allocate_tensors()
  images = np.random.default_rng(0).standard_normal((batch, resolution, resolution, 3))
  interpreter.set_tensor(detail["index"], images.astype(np.float32))
  return Runner(interpreter.invoke, time.perf_counter() - start, None, None,
                f"{kind} export, LiteRT + XNNPACK, {_deploy_threads(options)} threads")


DEPLOY_RUNNERS = {
    "ort": functools.partial(_ort_runner, "onnx", "ort"),
    "ort_torchvision": functools.partial(_ort_runner, "torchvision", "ort_torchvision"),
    "litert": functools.partial(_litert_runner, "tflite", "litert"),
    "litert_keras": functools.partial(_litert_runner, "keras", "litert_keras"),
    "litert_int8": functools.partial(_litert_runner, "tflite_int8", "litert_int8"),
    "litert_keras_int8": functools.partial(_litert_runner, "keras_int8", "litert_keras_int8"),
}


def print_export_ratios(results: list[Result]) -> None:
  """Ours over theirs in the same runtime (>1: ours faster), from the same interleaved rounds."""
  by_key = {(r.model, r.framework, r.mode, r.batch, r.resolution): r for r in results}
  lines = []
  for model, resolution in dict.fromkeys((r.model, r.resolution) for r in results):
    for mine, theirs in EXPORT_PAIRS:
      cells = []
      for (mode, batch) in sorted({(r.mode, r.batch) for r in results if r.mode != "train"}):
        a = by_key.get((model, mine, mode, batch, resolution))
        b = by_key.get((model, theirs, mode, batch, resolution))
        if a and b:
          cells.append(f"{'latency' if mode == 'latency' else 'infer'} b{batch} "
                       f"{a.images_per_s / b.images_per_s:.2f}x")
      if cells:
        lines.append(f"  {model:<20} {resolution:>4} {mine:<17} vs {theirs:<17} " + ", ".join(cells))
  if lines:
    print("\nexports, same runtime (>1: the first faster)")
    print("\n".join(lines))
