"""`mobilenet_jax.weights.load`, the one way in for weights, and the rooms' import rules.

Each kind of input gives the model, variables and eval recipe its weights need: a converter source
with its file (a torchvision MobileNet with random weights, nothing downloaded), the checkpoint
directory `python -m mobilenet_jax.convert` writes from it, and released `.tflite` files (when
../shared/data is present). Files exported here are loaded in test_export.py
(`test_exported_tflite_files_are_scored_by_evaluate`). The import rules are checked in fresh
processes: scoring loads nothing of exporting or training, converters nothing of exporting,
scoring or training, data nothing of training, and the weights package no TensorFlow, Keras or
torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mobilenet_jax import weights
from mobilenet_jax.data import eval_recipes

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "tflite").is_dir(),
                                reason="released .tflite files are in ../shared/data (not here)")
SIZE = 64


def run_python(code: str, cwd: Path = ROOT) -> str:
  """Runs `code` in a fresh interpreter (this repository first on the path); its stdout."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


LOADED_ROOMS = """
import sys
print(sorted({'.'.join(n.split('.')[:2]) for n in sys.modules if n.startswith('mobilenet_jax.')}
             | {n for n in ('tensorflow', 'keras', 'torch') if n in sys.modules}))
"""


@pytest.mark.parametrize("package, never", [
    ("mobilenet_jax.evaluate", ("mobilenet_jax.export", "mobilenet_jax.train")),
    ("mobilenet_jax.convert", ("mobilenet_jax.export", "mobilenet_jax.evaluate",
                               "mobilenet_jax.train")),
    ("mobilenet_jax.data", ("mobilenet_jax.train",)),
    ("mobilenet_jax.weights", ("mobilenet_jax.export", "mobilenet_jax.evaluate",
                               "mobilenet_jax.train", "tensorflow", "keras", "torch")),
])
def test_importing_a_room_loads_nothing_above_it(package, never):
  loaded = json.loads(run_python(f"import {package}\n{LOADED_ROOMS}").replace("'", '"'))
  assert package in loaded
  assert not set(never) & set(loaded), f"importing {package} loaded {set(never) & set(loaded)}"


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
  """A torchvision MobileNet V3-Small (random weights, 10 classes) as .safetensors, its logits on
  two random images, and the images."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  from safetensors.torch import save_file

  torch.manual_seed(0)
  module = torchvision.models.mobilenet_v3_small(weights=None, num_classes=10).eval()
  path = tmp_path_factory.mktemp("torchvision") / "mobilenet_v3_small.safetensors"
  save_file(module.state_dict(), str(path))
  images = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
  with torch.no_grad():
    logits = module(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
  return path, images, logits


def logits_of(loaded: weights.Loaded, images: np.ndarray) -> np.ndarray:
  return np.asarray(jax.jit(lambda v, x: loaded.model.apply(v, x, train=False))(loaded.variables,
                                                                               images))


def test_load_a_source_file_and_its_converted_checkpoint(torchvision_file, tmp_path):
  """`load("torchvision:...", weights_file=...)` gives PyTorch's logits and torchvision's recipe;
  the directory `python -m mobilenet_jax.convert` writes from the file loads to the same
  variables, model and recipe (recorded in model.json)."""
  from mobilenet_jax.convert.cli import main as convert_main

  path, images, reference = torchvision_file
  from_file = weights.load("torchvision:mobilenet_v3_small", weights_file=path)
  np.testing.assert_allclose(logits_of(from_file, images), reference, atol=1e-4)
  assert from_file.recipe == eval_recipes.torchvision()
  assert from_file.description.startswith("mobilenet_v3_small")

  out = tmp_path / "converted"
  assert convert_main(["--source=torchvision:mobilenet_v3_small", f"--weights={path}",
                       f"--out={out}"]) == 0
  from_directory = weights.load(out)
  assert (from_directory.model, from_directory.recipe) == (from_file.model, from_file.recipe)
  assert from_directory.recipe_source == "recorded in model.json"
  jax.tree.map(np.testing.assert_array_equal, from_directory.variables, from_file.variables)

  checkpoint = weights.read_checkpoint(str(out))   # what training's init_from reads
  assert checkpoint.model_name == "mobilenet_v3_small"
  assert (checkpoint.options["padding"], checkpoint.options["bn_epsilon"]) == ("symmetric", 1e-3)   # torchvision V3's
  jax.tree.map(np.testing.assert_array_equal, checkpoint.variables, from_file.variables)


def test_load_a_checkpoint_without_a_recipe_assumes_it_from_the_padding(torchvision_file,
                                                                        tmp_path):
  from mobilenet_jax.convert.files import convert_source
  from mobilenet_jax.pretrained import save_pretrained

  conversion = convert_source("torchvision:mobilenet_v3_small", torchvision_file[0])
  save_pretrained(str(tmp_path / "v3"), conversion.model_name, conversion.options,
                  conversion.variables)   # no preprocessing recorded
  loaded = weights.load(str(tmp_path / "v3"))
  assert loaded.recipe == eval_recipes.torchvision()
  assert loaded.recipe_source.startswith("assumed: PyTorch weights")
  jax.tree.map(np.testing.assert_array_equal, loaded.variables, conversion.variables)

  # A model.json that names another model than its variables: one line naming the first difference.
  meta_path = tmp_path / "v3" / "model.json"
  meta = json.loads(meta_path.read_text())
  meta["options"]["width_multiplier"] = 0.5
  meta_path.write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="does not hold the variables of the model.*params/"):
    weights.load(tmp_path / "v3")


def test_load_says_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither a file nor a checkpoint directory"):
    weights.load(tmp_path / "nothing")
  with pytest.raises(ValueError, match="give it as weights_file"):
    weights.load("timm:mobilenetv3_large_100")
  unknown = tmp_path / "model.pth"
  unknown.write_bytes(b"")
  with pytest.raises(ValueError, match="say how to read it with its source"):
    weights.load(unknown)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    weights.load("timm:mobilenetv3_large_100", weights_file=tmp_path / "none.safetensors")
  with pytest.raises(ValueError, match="--source must be one of"):
    weights.load("caffe:mobilenet", weights_file=unknown)


@needs_data
def test_load_released_tflite_files():
  """A released quantized file: our model with its dequantized weights, TF-slim's recipe at the
  file's resolution, and what the 8-bit arithmetic needs; the "tflite" source reads it alike."""
  path = DATA / "tflite" / "mobilenet_v1_0.25_128_quant.tflite"
  loaded = weights.load(path)
  assert loaded.description.startswith("mobilenet_v1")
  assert loaded.recipe == eval_recipes.tf_slim(128)
  assert loaded.tflite is not None and loaded.tflite.eight_bit is not None
  assert logits_of(loaded, np.zeros((1, 128, 128, 3), np.float32)).shape == (1, 1000)
  again = weights.load("tflite", weights_file=str(path))
  jax.tree.map(np.testing.assert_array_equal, again.variables, loaded.variables)
  with_background = weights.load(path, keep_background=True)
  assert with_background.model.num_classes == 1001

  v2 = weights.load(DATA / "tflite" / "mobilenet_v2_1.0_224_quant.tflite")
  assert v2.recipe == eval_recipes.tf_slim(224) and v2.description.startswith("mobilenet_v2")


def test_commands_main_paths_keep_to_their_rooms(torchvision_file, tmp_path):
  """In one fresh process: `python -m mobilenet_jax.convert`'s main on the file, then
  `python -m mobilenet_jax.evaluate`'s on the checkpoint and two images; after each, the modules
  loaded are still within the command's room rules."""
  from PIL import Image

  path = torchvision_file[0]
  images = tmp_path / "images"
  images.mkdir()
  for i, pixels in enumerate(np.random.default_rng(3).integers(0, 256, (2, 70, 90, 3))):
    Image.fromarray(pixels.astype(np.uint8)).save(images / f"{i}.png")
  out = run_python(f"""
import sys
from mobilenet_jax.convert.cli import main as convert
assert convert(["--source=torchvision:mobilenet_v3_small", "--weights={path}",
                "--out={tmp_path / 'converted'}"]) == 0
{LOADED_ROOMS}
from mobilenet_jax.evaluate.cli import main as evaluate
assert evaluate(["--weights={tmp_path / 'converted'}", "--images={images}",
                 "--batch_size=2"]) == 0
{LOADED_ROOMS}
""")
  after_convert, after_evaluate = (json.loads(line.replace("'", '"'))
                                   for line in out.splitlines() if line.startswith("["))
  assert "mobilenet_jax.convert" in after_convert
  assert not {"mobilenet_jax.export", "mobilenet_jax.evaluate", "mobilenet_jax.train"} & set(
      after_convert)
  assert "mobilenet_jax.weights" in after_evaluate
  assert not {"mobilenet_jax.export", "mobilenet_jax.train"} & set(after_evaluate)
