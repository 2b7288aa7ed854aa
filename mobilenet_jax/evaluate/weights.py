"""Weights to evaluate: a `.tflite` file, a file of any converter source, or a checkpoint directory
written by `python -m mobilenet_jax.convert` (read through training's `init_from`)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Optional

import numpy as np

from mobilenet_jax.data.eval_recipes import EvalRecipe, tf_slim, torchvision


@dataclasses.dataclass
class Weights:
  model: Any                 # the Flax module (None for a file exported here: LiteRT only)
  variables: Any
  recipe: EvalRecipe
  recipe_source: str         # where the recipe comes from, for the report
  description: str           # model name and options
  tflite: Optional[Any] = None   # convert.tflite_source.TfliteModel for a .tflite file
  path: str = ""


def _recipe(values: Any, where: str) -> EvalRecipe:
  try:
    return EvalRecipe.from_dict(values)
  except ValueError as e:
    raise ValueError(f"{where}: its recorded preprocessing is damaged ({e}); convert or export "
                     "the weights again") from None


def _from_checkpoint(directory: str) -> Weights:
  import jax
  import jax.numpy as jnp
  from flax import traverse_util

  from mobilenet_jax.models.registry import create_model
  from mobilenet_jax.pretrained import read_model_file
  from mobilenet_jax.train.init_from import load_initial_variables

  meta = read_model_file(directory)
  model = create_model(meta["model"], **meta["options"])
  if meta.get("preprocessing"):
    recipe = _recipe(meta["preprocessing"], f"{directory}/model.json")
    how = "recorded in model.json"
  elif meta["options"].get("padding", "same") == "same":
    recipe, how = tf_slim(224), "assumed: TF weights (padding 'same'), none recorded"
  else:
    recipe, how = torchvision(), "assumed: PyTorch weights (padding 'symmetric'), none recorded"
  template = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, recipe.resolution, recipe.resolution, 3)))
  values = load_initial_variables(directory, template, meta["options"])
  variables = {c: traverse_util.unflatten_dict(v, sep="/") for c, v in values.items()}
  return Weights(model, variables, recipe, how, f"{meta['model']} {meta['options']}",
                 path=directory)


@dataclasses.dataclass(frozen=True)
class ExportedTflite:
  """A `.tflite` file exported by `python -m mobilenet_jax.export`: run by LiteRT only (its graph,
  BatchNorm folded and int8-friendly, is not read back into our model)."""
  input: Any                  # convert.tflite_source.TfliteInput
  logits: int                 # the output tensor: float32 logits
  background: bool = False
  eight_bit: Any = None
  no_eight_bit_reason: str = ("an exported file is run by LiteRT (--runtime=litert); evaluate the "
                              "weights it was exported from for our model's figures")


def _from_export(path: str, data: bytes, meta: dict[str, Any]) -> Weights:
  import tflite

  from mobilenet_jax.convert.tflite_source import TfliteInput

  graph = tflite.Model.GetRootAs(data, 0).Subgraphs(0)
  tensor = graph.Tensors(graph.Inputs(0))
  dtype = {0: np.float32, 3: np.uint8, 9: np.int8}[tensor.Type()]
  shape = tuple(int(d) for d in tensor.ShapeAsNumpy())
  spec = TfliteInput(graph.Inputs(0), shape, dtype, None, None, (1.0, 0.0))
  if meta.get("input") == "uint8":   # 0..255 pixels, normalised by the file: x = (p - mean) / std
    from mobilenet_jax.export.program import PIXEL_NORMALIZATIONS

    if meta.get("normalization") not in PIXEL_NORMALIZATIONS:
      raise ValueError(f"{path}: its mobilenet_jax metadata names no pixel normalisation for its "
                       "uint8 input (damaged or edited); export the weights again")
    mean, std = (np.asarray(v, np.float64) for v in PIXEL_NORMALIZATIONS[meta["normalization"]])
    quantization = tensor.Quantization()
    spec = TfliteInput(graph.Inputs(0), shape, dtype, float(quantization.ScaleAsNumpy()[0]),
                       int(quantization.ZeroPointAsNumpy()[0]), (1 / std, -mean / std))
  resolution = shape[1]
  if meta.get("preprocessing"):
    recipe, how = _recipe(meta["preprocessing"], path), "recorded in the file"
  elif meta.get("padding", "same") == "same":
    recipe, how = tf_slim(resolution), "assumed: TF weights (padding 'same'), none recorded"
  else:
    recipe = torchvision(resolution)
    how = "assumed: PyTorch weights (padding 'symmetric'), none recorded"
  return Weights(None, None, recipe, how, f"{meta['description']} (exported by mobilenet_jax)",
                 ExportedTflite(spec, graph.Outputs(0)), path)


def load_weights(args: argparse.Namespace) -> Weights:
  """Reads `args.weights` (see `cli.main`'s --weights and --source)."""
  import os

  path = args.weights
  if os.path.isdir(path):
    return _from_checkpoint(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--weights={path} is neither a file nor a checkpoint directory")
  if path.endswith(".tflite") and not args.source:
    args.source = "tflite"
  if not args.source:
    raise ValueError(f"--weights={path}: give --source (keras:NAME, torchvision:NAME, timm:NAME "
                     "or tflite) to say how to read it")
  if args.source == "tflite":
    from mobilenet_jax.convert.tflite_source import convert_tflite_file
    from mobilenet_jax.export.tflite_metadata import read_metadata

    with open(path, "rb") as f:
      data = f.read()
    try:
      meta = read_metadata(data)
    except ValueError as e:   # a damaged or forged record
      raise ValueError(f"{path}: {e}") from None
    if meta is not None:
      return _from_export(path, data, meta)

    tflite = convert_tflite_file(path, not args.keep_background)
    conversion = tflite.conversion
  else:
    from mobilenet_jax.convert.cli import convert_file

    tflite, conversion = None, convert_file(args)
  recipe = EvalRecipe.from_dict(conversion.preprocessing)
  return Weights(conversion.model(), conversion.variables, recipe, f"the {args.source} source's",
                 f"{conversion.model_name} {conversion.options}", tflite, path)
