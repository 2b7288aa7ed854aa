"""`python -m mobilenet_jax.evaluate`: top-1/top-5 of any weights on a folder of images.

    python -m mobilenet_jax.evaluate --weights=mobilenet_v2_1.0_224_quant.tflite --images=DIR
    python -m mobilenet_jax.evaluate --weights=... --images=DIR --runtime=litert --json=out.json
    python -m mobilenet_jax.evaluate --weights=FILE.tflite --images=DIR --activations=float
    python -m mobilenet_jax.evaluate --weights=CHECKPOINT_DIR --images=DIR
    python -m mobilenet_jax.evaluate --source=timm:mobilenetv3_large_100 \\
        --weights=model.safetensors --images=DIR

Images are prepared by the weights' own eval recipe (`mobilenet_jax.data.eval_recipes`); labels
come from class folders or a leading integer in the file name (`mobilenet_jax.evaluate.images`).
--runtime=litert runs a .tflite file in LiteRT itself on the same prepared images.
A quantized .tflite file is run by our model with the file's own 8-bit arithmetic (LiteRT's logits,
`convert.eight_bit_apply`); --activations=float runs the converted float model instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np

from mobilenet_jax.weights.load import Loaded

RUNTIMES = ("jax", "litert")
ACTIVATIONS = ("auto", "float", "8bit")
TOP_K = 5


def _parser() -> argparse.ArgumentParser:
  from mobilenet_jax.convert.cli import add_source_arguments

  parser = argparse.ArgumentParser(
      prog="python -m mobilenet_jax.evaluate", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  add_source_arguments(parser, required=False, weights_help=(
      "a .tflite file, a file of another --source, or a checkpoint directory written by "
      "python -m mobilenet_jax.convert"))
  parser.add_argument("--images", required=True, help="folder of images (searched recursively)")
  parser.add_argument("--json", help="write totals and every image's top-5 classes here")
  parser.add_argument("--runtime", choices=RUNTIMES, default="jax",
                      help="jax: our converted model; litert: the .tflite file run by LiteRT")
  parser.add_argument("--activations", choices=ACTIVATIONS, default="auto",
                      help="8bit: our model with a quantized .tflite file's own 8-bit arithmetic "
                           "(gives LiteRT's logits; convert.eight_bit_apply); float: the converted "
                           "model as it is (what a checkpoint of it fine-tunes); auto (default): "
                           "8bit for a quantized V1/V2 .tflite file, float otherwise")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--labels", help="class names, one a line (a 1001-line file whose first "
                                       "line is the background class fits 1000-class models)")
  parser.add_argument("--print_predictions", action="store_true",
                      help="print every image's top-5 classes (always done when no image is "
                           "labelled)")
  parser.add_argument("--agree_with", help="JSON of an earlier run (e.g. --runtime=litert): "
                                           "report how often the top-1 classes agree")
  return parser


def top_k(logits: np.ndarray, k: int = TOP_K) -> np.ndarray:
  """Indices of the k largest logits per row, largest first (ties: lower index first)."""
  return np.argsort(-logits, axis=-1, kind="stable")[:, :k]


def summarize(paths: Sequence[str], labels: Sequence[Optional[int]], logits: np.ndarray,
              root: str) -> dict[str, Any]:
  """Totals and per-image top-5 classes; accuracy counts the labelled images only."""
  top = top_k(logits)
  labelled = [i for i, label in enumerate(labels) if label is not None]
  hits1 = sum(int(top[i, 0] == labels[i]) for i in labelled)
  hits5 = sum(int(labels[i] in top[i]) for i in labelled)
  n = len(labelled)
  return {
      "num_images": len(paths), "num_labelled": n, "num_classes": int(logits.shape[-1]),
      "top1": hits1 / n if n else None, "top5": hits5 / n if n else None,
      "images": [{"path": os.path.relpath(p, root), "label": label, "top5": top[i].tolist(),
                  "top5_logits": [round(float(v), 5) for v in logits[i, top[i]]]}
                 for i, (p, label) in enumerate(zip(paths, labels))],
  }


def agreement(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
  """How often two runs' top-1 classes agree, over the images both saw.

  `with_ties` also counts our top-1 as agreeing when it ties with their top-1 in their logits (an
  8-bit file's logits take ~256 values: two classes can share the largest, and the order among
  them is arbitrary).
  """
  their = {image["path"]: image for image in theirs["images"]}
  same = tied = n = 0
  for image in ours["images"]:
    other = their.get(image["path"])
    if other is None:
      continue
    n += 1
    top = other["top5_logits"][0]
    best = {c for c, v in zip(other["top5"], other["top5_logits"]) if v == top}
    same += image["top5"][0] == other["top5"][0]
    tied += image["top5"][0] in best
  if not n:
    raise ValueError("--agree_with: the two runs have no image in common")
  return {"images": n, "top1": same / n, "top1_with_ties": tied / n}


def resolve_activations(weights: Loaded, activations: str) -> str:
  """'auto' -> '8bit' for a file whose arithmetic `eight_bit_apply` reproduces, else 'float'."""
  if activations != "auto":
    return activations
  return "8bit" if weights.tflite is not None and weights.tflite.eight_bit is not None else "float"


def predict(weights: Loaded, paths: Sequence[str], runtime: str = "jax", batch_size: int = 32,
            progress: bool = True, activations: str = "auto") -> np.ndarray:
  """Logits [N, classes] of every image, prepared by `weights.recipe`, from our model (in float,
  or with a quantized file's 8-bit arithmetic: see --activations) or LiteRT."""
  from tqdm import tqdm

  from mobilenet_jax.evaluate.images import prepared_batches
  from mobilenet_jax.evaluate.runtimes import JaxClassifier, LiteRTClassifier

  activations = resolve_activations(weights, activations)
  if runtime != "litert" and weights.model is None:
    raise ValueError(f"{weights.path} was exported by mobilenet_jax: its graph (BatchNorm "
                     "folded) is not read back into our model; evaluate it with "
                     "--runtime=litert, or evaluate the weights it was exported from")
  if runtime == "litert":
    if weights.tflite is None:
      raise ValueError("--runtime=litert runs a .tflite file; --weights is not one")
    classify = LiteRTClassifier(weights.tflite, weights.path)
  elif activations == "8bit":
    if weights.tflite is None:
      raise ValueError("--activations=8bit reproduces a quantized .tflite file's arithmetic; "
                       "--weights is not a .tflite file (use --activations=float)")
    if weights.tflite.eight_bit is None:
      raise ValueError(f"--activations=8bit: {weights.tflite.no_eight_bit_reason} "
                       "(use --activations=float)")
    classify = JaxClassifier(weights.model, weights.variables, batch_size,
                             eight_bit=weights.tflite)
  else:
    classify = JaxClassifier(weights.model, weights.variables, batch_size)
  out = []
  with tqdm(total=len(paths), unit="img", disable=not progress, file=sys.stderr) as bar:
    for batch in prepared_batches(paths, weights.recipe, batch_size):
      out.append(classify(batch))
      bar.update(len(batch))
  return np.concatenate(out)


def _class_names(path: Optional[str], num_classes: int) -> Optional[list[str]]:
  """--labels' names; else ImageNet's own for a 1000-class (or 1001, background kept) model."""
  if not path:
    from mobilenet_jax.evaluate.images import imagenet_class_names

    names = imagenet_class_names()
    return {1000: names, 1001: ["background"] + names}.get(num_classes)
  with open(path) as f:
    names = [line.strip() for line in f if line.strip()]
  if len(names) == num_classes + 1:   # the TF-slim list: line 0 is the background class
    names = names[1:]
  if len(names) != num_classes:
    raise ValueError(f"--labels={path} has {len(names)} names; the model has {num_classes} classes")
  return names


def _check_json_folder(path: Optional[str]) -> None:
  """--json is written at the end: its folder must exist before the evaluation starts."""
  if path is None:
    return
  if os.path.isdir(path):
    raise ValueError(f"--json={path} is a directory; give the file to write")
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"--json={path}: the folder {folder} does not exist; create it first")


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the command; returns the exit status (0 on success, 1 on an error it explains)."""
  args = _parser().parse_args(argv)
  from mobilenet_jax.convert.assemble import ConversionError
  from mobilenet_jax.data.folder import BadImageError
  from mobilenet_jax.evaluate.images import list_images
  from mobilenet_jax.weights.arguments import load_from_arguments

  try:
    _check_json_folder(args.json)
    paths, labels = list_images(args.images)
    weights = load_from_arguments(args)
    args.activations = resolve_activations(weights, args.activations)
    print(f"{weights.description}\nimages: {len(paths)} under {args.images}, "
          f"{sum(l is not None for l in labels)} labelled; preprocessing "
          f"({weights.recipe_source}): {weights.recipe.describe()}; runtime: {args.runtime}"
          + (f", {args.activations} activations" if args.runtime == "jax" else ""),
          file=sys.stderr)
    start = time.perf_counter()
    logits = predict(weights, paths, args.runtime, args.batch_size,
                     activations=args.activations)
    seconds = time.perf_counter() - start
    result = summarize(paths, labels, logits, args.images)
    names = _class_names(args.labels, result["num_classes"])
    if args.agree_with:
      with open(args.agree_with) as f:
        result["agreement"] = agreement(result, json.load(f))
  except (ConversionError, ValueError, OSError, ImportError, BadImageError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  result.update(weights=os.path.abspath(args.weights), model=weights.description,
                runtime=args.runtime,
                activations=args.activations if args.runtime == "jax" else None,
                preprocessing=weights.recipe.to_dict(), seconds=seconds)
  if args.print_predictions or not result["num_labelled"]:
    for image in result["images"]:
      top = [names[c] if names else str(c) for c in image["top5"]]
      print(f"{image['path']}: {' | '.join(top)}")
  if result["num_labelled"]:
    print(f"top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  on "
          f"{result['num_labelled']} labelled images ({seconds:.1f} s)")
  else:
    print(f"{result['num_images']} images predicted, none labelled ({seconds:.1f} s)")
  if "agreement" in result:
    agree = result["agreement"]
    print(f"top-1 agreement with {args.agree_with}: {100 * agree['top1']:.2f}% of "
          f"{agree['images']} images ({100 * agree['top1_with_ties']:.2f}% counting its ties)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
  return 0
