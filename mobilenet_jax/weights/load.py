"""`load`: any weights this project reads, as one `Loaded` (model, variables, eval recipe)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Union

from mobilenet_jax.data.eval_recipes import EvalRecipe

SOURCE_KINDS = ("keras:", "torchvision:", "timm:")
PathLike = Union[str, "os.PathLike[str]"]


@dataclasses.dataclass(frozen=True)
class Loaded:
  """Weights with the model they belong to and the images they expect."""
  model: Any                 # the Flax module; None for a .tflite exported here (LiteRT runs it)
  variables: Any             # {'params', 'batch_stats'}; None for a .tflite exported here
  recipe: EvalRecipe         # how to prepare images for these weights
  recipe_source: str         # where the recipe comes from (recorded, or assumed from the padding)
  description: str           # model name and options
  path: str                  # the directory or file read
  # For a .tflite file: `convert.tflite_source.TfliteModel` (a released file: its input, logits and
  # 8-bit grids) or `weights.exported.ExportedTflite` (a file exported here).
  tflite: Optional[Any] = None


def load(path_or_source: PathLike, *, weights_file: Optional[PathLike] = None,
         keep_background: bool = False, alpha: float = 1.0, minimalistic: bool = False,
         include_top: Optional[bool] = None, classes: int = 1000) -> Loaded:
  """Reads weights from any of:

  - a checkpoint directory (`python -m mobilenet_jax.convert`, `pretrained.save_pretrained`);
  - a training run's workdir (`python -m mobilenet_jax.main`): its latest checkpoint (the moving
    average when the run kept one), with the run's own evaluation preprocessing;
  - a `.tflite` file: a released TFLite MobileNet (converted to our model, `convert.from_tflite`),
    or one exported by `python -m mobilenet_jax.export` (`model` None: LiteRT runs it);
  - a converter source "keras:NAME", "torchvision:NAME", "timm:NAME" or "tflite" with its
    `weights_file` (.h5/.keras, .safetensors/.pth, .tflite).

  `keep_background` keeps class 0 of a 1001-way (TF-slim) classifier. `alpha`, `minimalistic`,
  `include_top` (None: false when the file name contains 'no_top') and `classes` build the Keras
  application a Keras file is loaded into. Raises FileNotFoundError, ValueError or
  `convert.ConversionError` with what is wrong.
  """
  target = os.fspath(path_or_source)
  if weights_file is None:
    if os.path.isdir(target):
      from mobilenet_jax.weights.training_run import is_training_run

      return _from_training_run(target) if is_training_run(target) else _from_checkpoint(target)
    if target.startswith(SOURCE_KINDS) or target == "tflite":
      raise ValueError(f"source {target} reads a weight file: give it as weights_file "
                       "(--weights on the command line)")
    if not os.path.isfile(target):
      raise FileNotFoundError(f"{target} is neither a file nor a checkpoint directory")
    if not target.endswith(".tflite"):
      raise ValueError(f"{target}: say how to read it with its source (keras:NAME, "
                       "torchvision:NAME, timm:NAME or tflite; --source on the command line)")
    return _from_tflite(target, keep_background)
  path = os.fspath(weights_file)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file {path} does not exist")
  if target == "tflite":
    return _from_tflite(path, keep_background)
  from mobilenet_jax.convert.files import convert_source

  conversion = convert_source(target, path, drop_background=not keep_background, alpha=alpha,
                              minimalistic=minimalistic, include_top=include_top, classes=classes)
  return Loaded(conversion.model(), conversion.variables,
                EvalRecipe.from_dict(conversion.preprocessing), f"the {target} source's",
                f"{conversion.model_name} {conversion.options}", path)


def _from_checkpoint(directory: str) -> Loaded:
  from mobilenet_jax.weights.checkpoint import model_and_variables, read_checkpoint

  checkpoint = read_checkpoint(directory)
  model, variables = model_and_variables(checkpoint)
  return Loaded(model, variables, checkpoint.recipe, checkpoint.recipe_source,
                f"{checkpoint.model_name} {checkpoint.options}", directory)


def _from_training_run(directory: str) -> Loaded:
  from mobilenet_jax.weights.checkpoint import Checkpoint, model_and_variables
  from mobilenet_jax.weights.training_run import read_training_run

  name, options, variables, recipe, step = read_training_run(directory)
  how = "the run's own evaluation (config.json)"
  model, variables = model_and_variables(Checkpoint(directory, name, options, variables, recipe, how))
  return Loaded(model, variables, recipe, how, f"{name} {options} (training step {step})", directory)


def _from_tflite(path: str, keep_background: bool) -> Loaded:
  from mobilenet_jax.convert.tflite_metadata import read_metadata

  with open(path, "rb") as f:
    data = f.read()
  try:
    info = read_metadata(data)
  except ValueError as e:   # a damaged or forged record
    raise ValueError(f"{path}: {e}") from None
  if info is not None:
    from mobilenet_jax.weights.exported import read_exported

    try:
      exported, recipe, how = read_exported(data, info)
    except ValueError as e:   # metadata that no export writes
      raise ValueError(f"{path}: {e}") from None
    return Loaded(None, None, recipe, how, f"{info.description} (exported by mobilenet_jax)",
                  path, exported)
  from mobilenet_jax.convert.tflite_source import convert_tflite_file

  tflite = convert_tflite_file(path, not keep_background)
  conversion = tflite.conversion
  return Loaded(conversion.model(), conversion.variables,
                EvalRecipe.from_dict(conversion.preprocessing), "the tflite source's",
                f"{conversion.model_name} {conversion.options}", path, tflite)
