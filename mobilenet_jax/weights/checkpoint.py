"""A checkpoint directory written by `python -m mobilenet_jax.convert` or `save_pretrained`
(`mobilenet_jax/pretrained.py`: model.json + Orbax variables): its model, variables and recipe."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from mobilenet_jax.data.eval_recipes import EvalRecipe
from mobilenet_jax.weights.recipes import recorded_or_assumed

COLLECTIONS = ("params", "batch_stats")
DEFAULT_RESOLUTION = 224


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """What the directory holds, as stored (no model built)."""
  path: str
  model_name: str                 # a `create_model` name
  options: dict[str, Any]         # its `create_model` options
  variables: dict[str, Any]       # {'params', 'batch_stats'} trees of host numpy arrays
  recipe: EvalRecipe
  recipe_source: str


def read_checkpoint(directory: str) -> Checkpoint:
  """Reads `directory` (FileNotFoundError or ValueError with what to do when it is not one)."""
  from mobilenet_jax.pretrained import load_pretrained, read_model_file

  meta = read_model_file(directory)
  try:
    recipe, how = recorded_or_assumed(meta.get("preprocessing"),
                                      meta["options"].get("padding", "same"), DEFAULT_RESOLUTION,
                                      "model.json")
  except ValueError as e:   # "model.json: its recorded preprocessing is damaged ..."
    raise ValueError(os.path.join(directory, str(e))) from None
  name, options, variables = load_pretrained(directory)
  return Checkpoint(directory, name, options, variables, recipe, how)


def _first_difference(want: dict[str, Any], have: dict[str, Any]) -> str:
  for key in sorted(set(want) | set(have)):
    if key not in have or key not in want or tuple(want[key].shape) != tuple(have[key].shape):
      shape = lambda tree: tuple(tree[key].shape) if key in tree else "missing"
      return f"{key}: the model has {shape(want)}, the checkpoint {shape(have)}"
  return ""


def model_and_variables(checkpoint: Checkpoint) -> tuple[Any, dict[str, Any]]:
  """The Flax module model.json names, and the stored variables checked against its shapes and
  cast to its dtypes."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import traverse_util

  from mobilenet_jax.models.registry import create_model

  model = create_model(checkpoint.model_name, **checkpoint.options)
  size = checkpoint.recipe.resolution
  template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  variables = {}
  for collection in COLLECTIONS:
    want = traverse_util.flatten_dict(dict(template.get(collection, {})), sep="/")
    have = traverse_util.flatten_dict(dict(checkpoint.variables.get(collection, {})), sep="/")
    difference = _first_difference(want, have)
    if difference:
      raise ValueError(f"{checkpoint.path} does not hold the variables of the model its model.json "
                       f"names ({checkpoint.model_name} {checkpoint.options}): {collection}/"
                       f"{difference}; convert the weights again")
    variables[collection] = traverse_util.unflatten_dict(
        {k: np.asarray(v, want[k].dtype) for k, v in have.items()}, sep="/")
  return model, variables
