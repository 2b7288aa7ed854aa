"""The commands' --weights/--source options -> `load` (`python -m mobilenet_jax.evaluate`, `export`)."""

from __future__ import annotations

import argparse
import os

from mobilenet_jax.weights.load import Loaded, load


def load_from_arguments(args: argparse.Namespace) -> Loaded:
  """`load` of --weights (a directory or a .tflite file) or of --source with --weights as its file;
  the Keras options (`convert.cli.add_source_arguments`) where the command has them."""
  if not args.source or os.path.isdir(args.weights):
    return load(args.weights, keep_background=args.keep_background)
  include_top = getattr(args, "include_top", "auto")
  return load(args.source, weights_file=args.weights, keep_background=args.keep_background,
              alpha=getattr(args, "alpha", 1.0), minimalistic=getattr(args, "minimalistic", False),
              include_top=None if include_top == "auto" else include_top == "true",
              classes=getattr(args, "classes", 1000))
