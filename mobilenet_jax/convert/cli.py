"""`python -m mobilenet_jax.convert`: a downloaded weight file -> a checkpoint training starts from.

    python -m mobilenet_jax.convert --source=keras:mobilenet_v3_large --weights=W.h5 --out=DIR
    python -m mobilenet_jax.convert --source=timm:mobilenetv3_large_100 \
        --weights=model.safetensors --out=DIR
    python -m mobilenet_jax.convert --source=torchvision:mobilenet_v2 --weights=W.pth --out=DIR

DIR is written by `mobilenet_jax.pretrained.save_pretrained` (Orbax variables + model.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

SOURCES = ("keras", "torchvision", "timm")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m mobilenet_jax.convert", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--source", required=True,
                      help="keras:{mobilenet,mobilenet_v2,mobilenet_v3_large,mobilenet_v3_small}"
                           "[_minimal], torchvision:{mobilenet_v2,mobilenet_v3_large,"
                           "mobilenet_v3_small} or timm:NAME (e.g. timm:tf_mobilenetv3_large_075)")
  parser.add_argument("--weights", required=True,
                      help="Keras .h5/.weights.h5/.keras, or PyTorch .safetensors/.pth")
  parser.add_argument("--out", required=True,
                      help="directory to write (must not hold a checkpoint)")
  keras_options = parser.add_argument_group("Keras sources (build the application to load into)")
  keras_options.add_argument("--alpha", type=float, default=1.0, help="width multiplier")
  keras_options.add_argument("--minimalistic", action="store_true", help="V3 minimalistic form")
  keras_options.add_argument("--include_top", choices=("auto", "true", "false"), default="auto",
                             help="auto: false when the file name contains 'no_top'")
  keras_options.add_argument("--classes", type=int, default=1000)
  parser.add_argument("--keep_background", action="store_true",
                      help="keep class 0 of a 1001-way (TF-slim) classifier instead of dropping it")
  return parser


def _convert(args: argparse.Namespace):
  from mobilenet_jax.convert.files import load_keras_application, load_state_dict

  kind, _, name = args.source.partition(":")
  if kind not in SOURCES or not name:
    raise ValueError(f"--source must be one of {', '.join(s + ':NAME' for s in SOURCES)}, got "
                     f"{args.source!r}")
  drop_background = not args.keep_background
  if kind == "keras":
    from mobilenet_jax.convert.keras_source import convert_keras
    include_top = (args.include_top == "true" if args.include_top != "auto"
                   else "no_top" not in os.path.basename(args.weights))
    keras_model = load_keras_application(name, args.weights, args.alpha, include_top,
                                         args.classes, args.minimalistic)
    return convert_keras(keras_model, drop_background)
  from mobilenet_jax.convert.torch_source import TORCHVISION_ARCHS, convert_torch
  if kind == "torchvision" and name not in TORCHVISION_ARCHS:
    raise ValueError(f"unknown torchvision arch {name!r}; choose one of {TORCHVISION_ARCHS}")
  if kind == "timm" and name in TORCHVISION_ARCHS:
    raise ValueError(f"{name} is a torchvision name; use --source=torchvision:{name}")
  return convert_torch(load_state_dict(args.weights), name, drop_background)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the command; returns the exit status (0 on success, 1 on an error it explains)."""
  args = _parser().parse_args(argv)
  from mobilenet_jax.convert.assemble import ConversionError
  from mobilenet_jax.pretrained import save_pretrained
  from mobilenet_jax.profile import count_params

  try:
    conversion = _convert(args)
    save_pretrained(args.out, conversion.model_name, conversion.options, conversion.variables)
  except (ConversionError, ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {os.path.abspath(args.out)}: {conversion.model_name} "
        f"{json.dumps(conversion.options, sort_keys=True)}, "
        f"{count_params(conversion.variables):,} parameters")
  return 0
