"""Bad files and bad arguments get one clear line (exit status 1), never a traceback, and nothing is
written or overwritten: damaged weight files of every converter source, forged or damaged records
(model.json, an export's metadata), outputs that would clobber a file, weights that are not float
or not finite, too few int8 calibration images, an unknown --config key, a busy launcher port.
Each goes through the command a user runs (its `main`, or a subprocess for the flag-parsing ones).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import mobilenet_jax as mj
from mobilenet_jax.convert.cli import main as convert_main
from mobilenet_jax.evaluate import cli as evaluate
from mobilenet_jax.export.cli import main as export_main
from mobilenet_jax.pretrained import save_pretrained

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESOLUTION = 32


def one_error_line(capsys, *expected: str) -> str:
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1 and "Traceback" not in err, err
  for text in expected:
    assert text in lines[0], lines[0]
  return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A tiny converted checkpoint (1000 ImageNet classes) and a folder of two unlabelled photos."""
  root = tmp_path_factory.mktemp("bad_files")
  model = mj.create_model("mobilenet_v3_small_minimal", width_multiplier=0.35, num_classes=1000)
  save_pretrained(str(root / "checkpoint"), "mobilenet_v3_small_minimal",
                  {"width_multiplier": 0.35, "num_classes": 1000},
                  mj.init_variables(model, RESOLUTION, 0),
                  {"style": "central_crop", "resolution": RESOLUTION, "normalization": "inception"})
  (root / "photos").mkdir()
  for i, name in enumerate(("cat.png", "dog.png")):
    pixels = np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "photos" / name)
  return root


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory):
  """A valid .tflite flatbuffer (one convolution, not a MobileNet), made with TensorFlow."""
  tf = pytest.importorskip("tensorflow")
  kernel = tf.constant(np.ones((3, 3, 3, 4), np.float32))
  function = tf.function(lambda x: tf.nn.conv2d(x, kernel, 1, "SAME"),
                         input_signature=[tf.TensorSpec((1, 8, 8, 3), tf.float32)])
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [function.get_concrete_function()], function)
  path = tmp_path_factory.mktemp("tflite") / "tiny.tflite"
  path.write_bytes(converter.convert())
  return path


# ----------------------------------------------------------------------------- export's --out

def test_export_never_overwrites_silently_nor_writes_over_its_input(checkpoint, tmp_path, capsys):
  out = tmp_path / "m.stablehlo"
  out.write_bytes(b"released file")
  args = [f"--weights={checkpoint / 'checkpoint'}", "--format=stablehlo", f"--out={out}",
          f"--resolution={RESOLUTION}"]
  assert export_main(args) == 1
  one_error_line(capsys, "already exists", "--overwrite")
  assert out.read_bytes() == b"released file"
  weights = tmp_path / "r.tflite"
  weights.write_bytes(b"released file")
  assert export_main([f"--weights={weights}", "--format=tflite", f"--out={weights}",
                      "--overwrite"]) == 1
  one_error_line(capsys, "is the --weights file")
  assert weights.read_bytes() == b"released file"
  assert export_main([*args[:2], f"--out={tmp_path}", args[3]]) == 1
  one_error_line(capsys, "is a directory")
  assert export_main([*args, "--overwrite"]) == 0
  assert out.read_bytes() != b"released file"


def test_export_writes_atomically(checkpoint, tmp_path, monkeypatch):
  """A failure while the file is written (here: the final rename) leaves the old file whole and
  no partial file beside it."""
  from mobilenet_jax import export

  model = mj.create_model("mobilenet_v3_small_minimal", width_multiplier=0.35, num_classes=1000)
  variables = mj.init_variables(model, RESOLUTION, 0)
  out = tmp_path / "m.stablehlo"
  out.write_bytes(b"old")

  def disk_full(*args):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(os, "replace", disk_full)
  with pytest.raises(OSError, match="No space left"):
    export.to_stablehlo(model, variables, str(out), resolution=RESOLUTION)
  assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.stablehlo"]


def test_int8_export_refuses_too_few_calibration_images(checkpoint, tmp_path, capsys):
  assert export_main([f"--weights={checkpoint / 'checkpoint'}", "--format=tflite-int8",
                      f"--out={tmp_path / 'm.tflite'}", f"--calibration={checkpoint / 'photos'}",
                      f"--resolution={RESOLUTION}"]) == 1
  one_error_line(capsys, "calibration on 2 image(s)", "100-500", "--allow_few_calibration_images")
  assert not (tmp_path / "m.tflite").exists()


# ----------------------------------------------------------------------------- damaged weight files

def _torch_state_dict():
  torchvision = pytest.importorskip("torchvision")
  return torchvision.models.mobilenet_v3_small(num_classes=10).state_dict()


@pytest.mark.parametrize("damage, message", [
    (lambda sd: sd["features.0.0.weight"].fill_(float("nan")),
     "params/stem/conv/kernel holds 432 NaN or infinite value(s)"),
    (lambda sd: sd.__setitem__("classifier.3.weight", sd["classifier.3.weight"].int()),
     "classifier.3.weight is int32, not a float tensor"),
], ids=["nan", "int32"])
def test_convert_refuses_non_finite_or_non_float_weights(damage, message, tmp_path, capsys):
  from safetensors.torch import save_file

  state = _torch_state_dict()
  damage(state)
  save_file(state, str(tmp_path / "w.safetensors"))
  assert convert_main(["--source=torchvision:mobilenet_v3_small",
                       f"--weights={tmp_path / 'w.safetensors'}", f"--out={tmp_path / 'out'}"]) == 1
  one_error_line(capsys, message)
  assert not (tmp_path / "out").exists()


def test_damaged_safetensors_and_pth_files(tmp_path, capsys):
  torch = pytest.importorskip("torch")
  from safetensors.torch import save_file

  state = _torch_state_dict()
  save_file(state, str(tmp_path / "w.safetensors"))
  data = (tmp_path / "w.safetensors").read_bytes()
  (tmp_path / "cut.safetensors").write_bytes(data[:len(data) // 2])
  (tmp_path / "noise.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
  torch.save(state, tmp_path / "w.pth")
  (tmp_path / "cut.pth").write_bytes((tmp_path / "w.pth").read_bytes()[:4096])
  torch.save({"state_dict": state, "payload": Payload()}, tmp_path / "evil.pth")
  for name, text in [("cut.safetensors", "may be truncated"), ("noise.safetensors", "not a readable"),
                     ("cut.pth", "may be truncated"), ("evil.pth", "cannot be loaded safely")]:
    assert convert_main(["--source=torchvision:mobilenet_v3_small", f"--weights={tmp_path / name}",
                         f"--out={tmp_path / 'out'}"]) == 1, name
    line = one_error_line(capsys, name, text)
    assert "weights_only" not in line
  assert not (tmp_path / "out").exists()


class Payload:
  """What a malicious pickle carries: code to run when it is loaded (here harmless)."""

  def __reduce__(self):
    return (print, ("this ran while loading",))


def test_damaged_and_misfitting_keras_files(tmp_path, capsys):
  pytest.importorskip("keras")
  import keras

  model = keras.applications.MobileNetV3Small(weights=None, alpha=0.75, classes=10,
                                              input_shape=(RESOLUTION, RESOLUTION, 3))
  model.save_weights(tmp_path / "w.weights.h5")
  data = (tmp_path / "w.weights.h5").read_bytes()
  (tmp_path / "cut.weights.h5").write_bytes(data[:len(data) // 2])
  base = ["--source=keras:mobilenet_v3_small", "--classes=10", f"--out={tmp_path / 'out'}"]
  assert convert_main([*base, "--alpha=0.75", f"--weights={tmp_path / 'cut.weights.h5'}"]) == 1
  one_error_line(capsys, "cut.weights.h5", "may be truncated")
  assert convert_main([*base, "--alpha=1.0", f"--weights={tmp_path / 'w.weights.h5'}"]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "is (1, 1, 96, 40) here, (1, 1, 96, 32) in the file" in err, err


def test_truncated_tflite_file(tiny_tflite, checkpoint, tmp_path, capsys):
  data = tiny_tflite.read_bytes()
  cut = tmp_path / "cut.tflite"
  cut.write_bytes(data[:len(data) // 2])
  assert convert_main(["--source=tflite", f"--weights={cut}", f"--out={tmp_path / 'out'}"]) == 1
  one_error_line(capsys, "cut.tflite is truncated or damaged")
  assert evaluate.main([f"--weights={cut}", f"--images={checkpoint / 'photos'}"]) == 1
  one_error_line(capsys, "cut.tflite is truncated or damaged")


class _Forged:
  """Metadata JSON that no export writes (add_metadata stores what `to_json` returns)."""

  def __init__(self, values):
    self.values = values

  def to_json(self) -> bytes:
    return json.dumps(self.values).encode()


def test_forged_export_metadata(tiny_tflite, checkpoint, tmp_path, capsys):
  from mobilenet_jax.convert.tflite_metadata import add_metadata

  forged = tmp_path / "forged.tflite"
  forged.write_bytes(add_metadata(tiny_tflite.read_bytes(),
                                  _Forged({"description": "x", "input": "uint8", "resolution": 32})))
  assert evaluate.main([f"--weights={forged}", f"--images={checkpoint / 'photos'}",
                        "--runtime=litert"]) == 1
  one_error_line(capsys, "forged.tflite", "export the weights again")
  forged.write_bytes(add_metadata(tiny_tflite.read_bytes(), _Forged({"preprocessing": [1]})))
  assert evaluate.main([f"--weights={forged}", f"--images={checkpoint / 'photos'}"]) == 1
  one_error_line(capsys, "forged.tflite: the mobilenet_jax metadata", "damaged")


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "is not a model.json of save_pretrained"),
    ("{\"model\": ", "is not valid JSON"),
    (None, "recorded preprocessing is damaged"),
], ids=["list", "invalid_json", "bad_preprocessing"])
def test_damaged_model_json_names_the_file(text, message, checkpoint, tmp_path, capsys):
  import shutil

  copy = tmp_path / "checkpoint"
  shutil.copytree(checkpoint / "checkpoint", copy)
  if text is None:
    meta = json.loads((copy / "model.json").read_text())
    meta["preprocessing"]["style"] = "zoom"
    text = json.dumps(meta)
  (copy / "model.json").write_text(text)
  assert evaluate.main([f"--weights={copy}", f"--images={checkpoint / 'photos'}"]) == 1
  one_error_line(capsys, str(copy / "model.json"), message)


def test_dataset_archive_that_cannot_be_extracted_is_named(tmp_path):
  from mobilenet_jax.data.folder import FolderSource

  archive = tmp_path / "photos.tar.gz"
  archive.write_bytes(np.random.default_rng(0).bytes(1000))
  with pytest.raises(ValueError, match=f"dataset archive {archive} cannot be extracted"):
    FolderSource(str(archive))


# ----------------------------------------------------------------------------- evaluate

def test_evaluate_json_into_a_missing_folder_fails_before_evaluating(checkpoint, monkeypatch,
                                                                     capsys):
  def never(*args, **kwargs):
    raise AssertionError("evaluated before refusing --json")
  monkeypatch.setattr(evaluate, "predict", never)
  assert evaluate.main([f"--weights={checkpoint / 'checkpoint'}",
                        f"--images={checkpoint / 'photos'}",
                        f"--json={checkpoint / 'missing' / 'out.json'}"]) == 1
  one_error_line(capsys, "does not exist")


def test_evaluate_names_the_top_classes_of_unlabelled_photos(checkpoint, capsys):
  from mobilenet_jax.evaluate.images import imagenet_class_names

  names = imagenet_class_names()
  assert len(names) == 1000 and names[0] == "tench, Tinca tinca" and names[-1].startswith("toilet")
  assert evaluate.main([f"--weights={checkpoint / 'checkpoint'}",
                        f"--images={checkpoint / 'photos'}", "--batch_size=2"]) == 0
  lines = capsys.readouterr().out.splitlines()
  for photo in ("cat.png", "dog.png"):
    line = next(line for line in lines if line.startswith(f"{photo}: "))
    top = line[len(photo) + 2:].split(" | ")
    assert len(top) == 5 and all(name in names for name in top), line


# ----------------------------------------------------------------------------- training and launcher

def test_unknown_config_flag_names_the_closest_key(tmp_path):
  result = subprocess.run([sys.executable, "-m", "mobilenet_jax.main", f"--workdir={tmp_path}",
                           "--config.optimizer.learning_rate=0.1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
  assert ("unknown config key 'optimizer.learning_rate'; did you mean 'schedule.learning_rate'"
          in result.stderr), result.stderr


def test_launcher_refuses_a_port_in_use(tmp_path):
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "mobilenet_jax.launch", f"--port={port}", "--",
                             f"--workdir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
  assert result.returncode == 1, result.stderr
  assert result.stderr.strip() == (f"launch: error: port {port} of 127.0.0.1 is in use; pass "
                                   "another --port, or none to use a free one")
  assert not (tmp_path / "run").exists()
