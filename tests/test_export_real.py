"""Export of real MobileNets (released TFLite files read by `from_tflite`) and their int8 accuracy.

- V1 0.25/128: the float TFLite, ONNX and StableHLO files give JAX's logits (<= 1e-4 of their
  scale) on real photographs prepared by the file's eval recipe.
- V2 1.0/224 (Keras's float weights, from the TF2 post-training-quantized file): full-integer
  int8 export calibrated on the 100 ImageNet images agrees with the float JAX model's top-1 on
  >= 95% of them and the photos (the photos unseen), and is about 4x smaller. (The TF-slim
  quantization-aware V2 file, dequantized, agrees on 94.4%.)

Needs ../shared/data (skipped without it) and the `export` extra.
"""

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(),
                                reason=f"real data not found at {DATA} (see its README.md)")
pytest.importorskip("jax2onnx", reason='pip install -e ".[export]"')
pytest.importorskip("onnxruntime", reason='pip install -e ".[export]"')
pytest.importorskip("ai_edge_litert", reason='pip install -e ".[export]"')

import onnxruntime as ort  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from mobilenet_jax.models.layers import ConvNormAct  # noqa: E402

from mobilenet_jax import export  # noqa: E402
from mobilenet_jax.evaluate.images import list_images, prepared_batches  # noqa: E402
from mobilenet_jax.evaluate.runtimes import JaxClassifier  # noqa: E402
from mobilenet_jax.weights import load  # noqa: E402


INT8_MODEL = "tf2_mobilenet_v2_1.0_224_ptq.tflite"   # Keras MobileNetV2's float weights


def weights(name):
  return load(DATA / "tflite" / name)


def prepared(paths, recipe):
  return np.concatenate(list(prepared_batches(paths, recipe, 16)))


def litert(data, images):
  interpreter = Interpreter(model_content=data, num_threads=2)
  interpreter.allocate_tensors()
  detail, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
  logits = []
  for image in images:
    interpreter.set_tensor(detail["index"], image[None].astype(detail["dtype"]))
    interpreter.invoke()
    logits.append(interpreter.get_tensor(out["index"])[0])
  return np.stack(logits)


def relative_error(ours, reference):
  return float(np.abs(ours - reference).max() / np.abs(reference).max())


def test_real_v1_float_exports_compute_jax_logits():
  w = weights("mobilenet_v1_0.25_128_quant.tflite")
  resolution = w.recipe.resolution
  photos, _ = list_images(str(DATA / "photos"))
  x = prepared(photos[:3], w.recipe)
  reference = JaxClassifier(w.model.clone(conv_norm_act=ConvNormAct), w.variables, len(x))(x)
  tflite = export.to_tflite(w.model, w.variables, resolution=resolution)
  assert relative_error(litert(tflite, x), reference) <= 1e-4
  session = ort.InferenceSession(export.to_onnx(w.model, w.variables, resolution=resolution),
                                 providers=["CPUExecutionProvider"])
  assert relative_error(session.run(None, {"images": x.transpose(0, 3, 1, 2)})[0],
                        reference) <= 1e-4
  exported = jax.export.deserialize(bytearray(export.to_stablehlo(w.model, w.variables,
                                                                  resolution=resolution)))
  assert relative_error(np.asarray(exported.call(x)), reference) <= 1e-4


def test_real_v2_int8_agrees_with_float_and_is_four_times_smaller():
  w = weights(INT8_MODEL)
  imagenet, _ = list_images(str(DATA / "imagenet-sample-100"))
  photos, _ = list_images(str(DATA / "photos"))
  x = prepared(imagenet + photos, w.recipe)
  calibration = x[:len(imagenet)]   # the ImageNet images; the photos are unseen
  resolution = w.recipe.resolution
  float_file = export.to_tflite(w.model, w.variables, resolution=resolution)
  int8_file = export.to_tflite_int8(w.model, w.variables, resolution=resolution,
                                    calibration=calibration)
  # int8 weights are a quarter of float32; int32 biases and per-channel scales add a little.
  assert 3.3 < len(float_file) / len(int8_file) < 4.5, (len(float_file), len(int8_file))
  plain = w.model.clone(conv_norm_act=ConvNormAct)
  reference = np.concatenate([JaxClassifier(plain, w.variables, 16)(x[i:i + 16])
                              for i in range(0, len(x), 16)])
  top1, int8_top1 = reference.argmax(-1), litert(int8_file, x).argmax(-1)
  agreement = float(np.mean(top1 == int8_top1))
  unseen = np.arange(len(x)) >= len(imagenet)
  print(f"int8 top-1 agreement: {agreement:.3f} of {len(x)} images, "
        f"{np.mean((top1 == int8_top1)[unseen]):.3f} of the {unseen.sum()} not calibrated on; "
        f"float {len(float_file)} bytes, int8 {len(int8_file)} bytes")
  assert agreement >= 0.95


def test_real_v2_int8_uint8_input(tmp_path):
  """The command with --input=uint8: the file takes the recipe's crop as 0..255 pixels."""
  from mobilenet_jax.export.cli import main

  out = tmp_path / "v2_uint8.tflite"
  path = DATA / "tflite" / INT8_MODEL
  assert main([f"--weights={path}", "--format=tflite-int8", f"--out={out}",
               f"--calibration={DATA / 'imagenet-sample-100'}", "--calibration_images=32",
               "--allow_few_calibration_images",
               "--input=uint8"]) == 0
  w = weights(path.name)
  photos, _ = list_images(str(DATA / "photos"))
  pixels = prepared(photos, dataclasses.replace(w.recipe, normalization="unit")) * 255
  reference = JaxClassifier(w.model.clone(conv_norm_act=ConvNormAct), w.variables, len(photos))(
      prepared(photos, w.recipe))
  ours = litert(out.read_bytes(), np.round(pixels))
  assert np.mean(ours.argmax(-1) == reference.argmax(-1)) >= 6 / 7
