"""`python -m mobilenet_jax.export`: trained weights -> a LiteRT, ONNX or StableHLO file.

    python -m mobilenet_jax.export --weights=DIR --format=tflite --out=m.tflite
    python -m mobilenet_jax.export --weights=DIR --format=tflite-int8 --calibration=IMAGES \\
        --input=uint8 --out=m_int8.tflite
    python -m mobilenet_jax.export --weights=DIR --format=onnx --batch=dynamic --out=m.onnx
    python -m mobilenet_jax.export --weights=DIR --format=stablehlo --out=m.stablehlo
    python -m mobilenet_jax.export --weights=DIR --format=stablehlo --out=m.mlir   # IREE, XLA

--weights is a checkpoint directory (`python -m mobilenet_jax.convert`, training's output) or a
weight file of a converter source (a `.tflite` file, or --source=keras:NAME/torchvision:NAME/...).
Calibration images are prepared with the weights' eval recipe, as `python -m mobilenet_jax.evaluate`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Iterator, Optional, Sequence

import numpy as np

from mobilenet_jax.export import FORMATS

CALIBRATION_BATCH = 16
# TFLite's post-training quantization guide: the representative dataset is "a small subset (around
# ~100-500 samples) of the training or validation data"; fewer is refused unless asked for.
MIN_CALIBRATION_IMAGES = 100


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m mobilenet_jax.export",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--weights", required=True,
                      help="checkpoint directory, .tflite file, or a --source weight file")
  parser.add_argument("--source", default=None,
                      help="how to read a weight file: tflite, keras:NAME, torchvision:NAME, "
                           "timm:NAME (default: tflite for .tflite files)")
  parser.add_argument("--keep_background", action="store_true",
                      help="keep class 0 of a 1001-way (TF-slim) classifier")
  parser.add_argument("--format", required=True, choices=FORMATS)
  parser.add_argument("--out", required=True,
                      help="file to write (refused if it exists, unless --overwrite)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace an existing --out file (never the --weights file itself)")
  parser.add_argument("--batch", default=None,
                      help="N or 'dynamic' (default: 1 for TFLite and StableHLO .mlir text, "
                           "which IREE compiles only with a fixed batch; dynamic for ONNX and "
                           "serialized StableHLO)")
  parser.add_argument("--resolution", type=int, default=None,
                      help="input size (default: the weights' eval resolution)")
  parser.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw",
                      help="ONNX input layout")
  parser.add_argument("--calibration", default=None,
                      help="tflite-int8: a folder of representative images")
  parser.add_argument("--calibration_images", type=int, default=200,
                      help="tflite-int8: at most this many calibration images")
  parser.add_argument("--allow_few_calibration_images", action="store_true",
                      help=f"tflite-int8: calibrate on fewer than {MIN_CALIBRATION_IMAGES} images "
                           "(a warning instead of an error; int8 accuracy suffers)")
  parser.add_argument("--input", choices=("float32", "uint8"), default="float32",
                      help="tflite-int8 input: normalised float32 images, or uint8 pixels 0..255")
  return parser


def _check_out(args: argparse.Namespace) -> None:
  """--out must be a new file in an existing folder (an existing one with --overwrite, as `cp`
  and `pip download` refuse to clobber by default), and never the --weights it is read from."""
  out = args.out
  if os.path.isdir(out):
    raise ValueError(f"--out={out} is a directory; give the file to write, e.g. "
                     f"{os.path.join(out, 'model.' + args.format.split('-')[0])}")
  if os.path.exists(out) and os.path.realpath(out) == os.path.realpath(args.weights):
    raise ValueError(f"--out={out} is the --weights file; write the export to another file")
  if os.path.exists(out) and not args.overwrite:
    raise FileExistsError(f"--out={out} already exists; choose another file, or pass --overwrite "
                          "to replace it")
  folder = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"--out={out}: the folder {folder} does not exist")


def _check(args: argparse.Namespace) -> None:
  int8 = args.format == "tflite-int8"
  if int8 and not args.calibration:
    raise ValueError("--format=tflite-int8 needs --calibration=DIR, a folder of representative "
                     "images (a hundred or more) to measure the activation ranges on")
  if not int8 and (args.calibration or args.input != "float32"):
    raise ValueError("--calibration and --input apply to --format=tflite-int8 only")
  if args.format != "onnx" and args.layout != "nchw":
    raise ValueError("--layout applies to --format=onnx only (TFLite and StableHLO take NHWC)")
  if args.calibration and not os.path.isdir(args.calibration):
    raise FileNotFoundError(f"--calibration={args.calibration} is not a directory")
  _check_out(args)
  if int8:
    _check_calibration_count(args)


def _check_calibration_count(args: argparse.Namespace) -> None:
  """At least MIN_CALIBRATION_IMAGES images (TFLite's guide asks for ~100-500): one image gives
  ranges that clip most activations. --allow_few_calibration_images makes the error a warning."""
  from mobilenet_jax.evaluate.images import list_images

  found = len(list_images(args.calibration)[0])
  count = min(found, args.calibration_images)
  if count >= MIN_CALIBRATION_IMAGES:
    return
  message = (f"int8 calibration on {count} image(s) (--calibration={args.calibration} holds "
             f"{found}, --calibration_images={args.calibration_images}); TFLite's quantization "
             f"guide asks for 100-500 representative images")
  if not args.allow_few_calibration_images:
    raise ValueError(f"{message}: add images, or pass --allow_few_calibration_images to accept "
                     "a less accurate file")
  print(f"warning: {message}; int8 accuracy will suffer", file=sys.stderr)


def calibration_batches(directory: str, recipe, pixels: bool, limit: int
                        ) -> Iterator[np.ndarray]:
  """float32 batches of the folder's images prepared by `recipe`; 0..255 pixels when `pixels`."""
  from mobilenet_jax.evaluate.images import list_images, prepared_batches

  paths, _ = list_images(directory)
  # An even sample of the sorted folder: every class of a train/<class>/ folder, not the first.
  paths = paths[::max(1, len(paths) // limit)][:limit]
  if pixels:   # the recipe's crop and resize, scaled back to 0..255 ("unit" is x / 255)
    recipe = dataclasses.replace(recipe, normalization="unit")
  for batch in prepared_batches(paths, recipe, CALIBRATION_BATCH):
    yield batch * 255.0 if pixels else batch


def run(args: argparse.Namespace) -> str:
  """Writes the file; returns a one-line description of it."""
  from mobilenet_jax import export
  from mobilenet_jax.weights.arguments import load_from_arguments

  _check(args)
  weights = load_from_arguments(args)
  recipe = weights.recipe
  resolution = args.resolution or recipe.resolution
  options = {"resolution": resolution}
  if args.batch is not None:
    options["batch"] = args.batch
  if args.format == "onnx":
    options["layout"] = args.layout
  if args.format == "tflite-int8":
    pixels = args.input == "uint8"
    recipe = dataclasses.replace(recipe, resolution=resolution)
    options.update(input_type=args.input, normalization=recipe.normalization if pixels else None,
                   calibration=lambda: calibration_batches(args.calibration, recipe, pixels,
                                                           args.calibration_images))
  if args.format.startswith("tflite"):   # recorded in the file, for python -m mobilenet_jax.evaluate
    options.update(preprocessing=dataclasses.replace(recipe, resolution=resolution).to_dict(),
                   description=weights.description)
  data = export.export(weights.model, weights.variables, args.format, args.out, **options)
  return (f"wrote {os.path.abspath(args.out)}: {args.format}, {len(data) / 2**20:.2f} MiB, "
          f"{weights.description}, {resolution}x{resolution}")


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the command; returns the exit status (0 on success, 1 on an error it explains)."""
  args = _parser().parse_args(argv)
  try:
    print(run(args))
  except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0
