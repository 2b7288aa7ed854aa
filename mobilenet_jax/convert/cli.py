"""`python -m mobilenet_jax.convert`: a downloaded weight file -> a checkpoint training starts from.

    python -m mobilenet_jax.convert --source=keras:mobilenet_v3_large --weights=W.h5 --out=DIR
    python -m mobilenet_jax.convert --source=timm:mobilenetv3_large_100 \
        --weights=model.safetensors --out=DIR
    python -m mobilenet_jax.convert --source=torchvision:mobilenet_v2 --weights=W.pth --out=DIR
    python -m mobilenet_jax.convert --source=tflite --weights=mobilenet_v2_1.0_224_quant.tflite \
        --out=DIR

DIR is written by `mobilenet_jax.pretrained.save_pretrained` (Orbax variables + model.json, which
also records the eval preprocessing the source's weights expect).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence


def add_source_arguments(parser: argparse.ArgumentParser, required: bool = True,
                         weights_help: str = "") -> None:
  """--source, --weights and the options of Keras sources (shared with `mobilenet_jax.evaluate`)."""
  parser.add_argument("--source", required=required,
                      help="keras:{mobilenet,mobilenet_v2,mobilenet_v3_large,mobilenet_v3_small}"
                           "[_minimal], torchvision:{mobilenet_v2,mobilenet_v3_large,"
                           "mobilenet_v3_small}, timm:NAME (e.g. timm:tf_mobilenetv3_large_075) "
                           "or tflite (any TFLite MobileNet V1/V2/V3, float or quantized)")
  parser.add_argument("--weights", required=True,
                      help=weights_help or "Keras .h5/.weights.h5/.keras, PyTorch "
                                           ".safetensors/.pth, or .tflite")
  keras_options = parser.add_argument_group("Keras sources (build the application to load into)")
  keras_options.add_argument("--alpha", type=float, default=1.0, help="width multiplier")
  keras_options.add_argument("--minimalistic", action="store_true", help="V3 minimalistic form")
  keras_options.add_argument("--include_top", choices=("auto", "true", "false"), default="auto",
                             help="auto: false when the file name contains 'no_top'")
  keras_options.add_argument("--classes", type=int, default=1000)
  parser.add_argument("--keep_background", action="store_true",
                      help="keep class 0 of a 1001-way (TF-slim) classifier instead of dropping it")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m mobilenet_jax.convert", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  add_source_arguments(parser)
  parser.add_argument("--out", required=True,
                      help="directory to write (must not hold a checkpoint)")
  return parser


def convert_file(args: argparse.Namespace):
  """The `Conversion` of `args.weights` read as `args.source` (see `add_source_arguments`)."""
  from mobilenet_jax.convert.files import convert_source

  include_top = None if args.include_top == "auto" else args.include_top == "true"
  return convert_source(args.source, args.weights, drop_background=not args.keep_background,
                        alpha=args.alpha, minimalistic=args.minimalistic,
                        include_top=include_top, classes=args.classes)


def check_values(variables) -> None:
  """Refuses weights a checkpoint must not hold: non-float tensors (an integer kernel is not a
  MobileNet's) and NaN or infinite values (a diverged or damaged file), naming the first tensor;
  as timm's and Keras' loaders refuse tensors that do not fit, before anything is written."""
  import jax
  import numpy as np

  for path, value in jax.tree_util.tree_flatten_with_path(variables)[0]:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    value = np.asarray(value)
    if not np.issubdtype(value.dtype, np.floating):
      raise ValueError(f"{name} is {value.dtype}, not a float tensor; the weights file is not a "
                       "float MobileNet checkpoint")
    if not np.all(np.isfinite(value)):
      bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
      raise ValueError(f"{name} holds {bad} NaN or infinite value(s); the weights file is "
                       "damaged or from a diverged run, nothing was written")


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the command; returns the exit status (0 on success, 1 on an error it explains)."""
  args = _parser().parse_args(argv)
  from mobilenet_jax.convert.assemble import ConversionError
  from mobilenet_jax.pretrained import save_pretrained
  from mobilenet_jax.profile import count_params

  try:
    conversion = convert_file(args)
    check_values(conversion.variables)
    save_pretrained(args.out, conversion.model_name, conversion.options, conversion.variables,
                    conversion.preprocessing)
  except (ConversionError, ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {os.path.abspath(args.out)}: {conversion.model_name} "
        f"{json.dumps(conversion.options, sort_keys=True)}, "
        f"{count_params(conversion.variables):,} parameters")
  return 0
