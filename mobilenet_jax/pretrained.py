"""A pretrained-weights checkpoint: Flax variables plus the model they belong to, in one directory.

    save_pretrained(directory, "mobilenet_v3_large", {"width_multiplier": 0.75}, variables)
    name, options, variables = load_pretrained(directory)
    model = create_model(name, **options)

Layout: `directory/variables/` is an Orbax PyTree checkpoint of {'params', 'batch_stats'};
`directory/model.json` names the model and its `create_model` options, and (when the source says)
the eval preprocessing its weights expect (`data.eval_recipes.EvalRecipe.to_dict()`). `python -m
mobilenet_jax.convert` writes these; the training config field `init_from` reads them.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import jax
import numpy as np

MODEL_FILE = "model.json"
VARIABLES_DIR = "variables"
FORMAT_VERSION = 1


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
  out = {}
  for key, value in options.items():
    if isinstance(value, tuple):
      value = list(value)
    try:
      json.dumps(value)
    except TypeError as e:
      raise ValueError(f"model option {key}={value!r} cannot be stored in {MODEL_FILE}; pass it "
                       "again when you create the model") from e
    out[key] = value
  return out


def save_pretrained(directory: str, model_name: str, model_options: Mapping[str, Any],
                    variables: Mapping[str, Any],
                    preprocessing: Optional[Mapping[str, Any]] = None) -> None:
  """Writes `variables` ({'params', 'batch_stats'}) and the model description to `directory`.

  Refuses to overwrite an existing checkpoint, so no earlier work is lost.
  """
  import orbax.checkpoint as ocp  # imported here: the model code must not need orbax

  directory = os.path.abspath(directory)
  if os.path.exists(os.path.join(directory, MODEL_FILE)):
    raise FileExistsError(f"{directory} already holds a checkpoint; choose another --out directory "
                          "or delete it first")
  os.makedirs(directory, exist_ok=True)
  tree = jax.tree.map(np.asarray, dict(variables))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(directory, VARIABLES_DIR), tree)
    checkpointer.wait_until_finished()
  meta = {"format_version": FORMAT_VERSION, "model": model_name,
          "options": _jsonable(model_options)}
  if preprocessing is not None:
    meta["preprocessing"] = _jsonable(preprocessing)
  # model.json is written last: a directory without it is an incomplete checkpoint.
  tmp = os.path.join(directory, MODEL_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
  os.replace(tmp, os.path.join(directory, MODEL_FILE))


def is_pretrained_dir(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, MODEL_FILE))


def read_model_file(directory: str) -> dict[str, Any]:
  """The model.json of a directory written by `save_pretrained` (model, options, preprocessing)."""
  directory = os.path.abspath(directory)
  meta_path = os.path.join(directory, MODEL_FILE)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(
        f"{directory} is not a pretrained checkpoint (no {MODEL_FILE}); create one with "
        "`python -m mobilenet_jax.convert --source=... --weights=... --out=DIR`")
  with open(meta_path) as f:
    try:
      meta = json.load(f)
    except ValueError as e:
      raise ValueError(f"{meta_path} is not valid JSON ({e}); convert the weights again") from None
  if not (isinstance(meta, dict) and isinstance(meta.get("model"), str)
          and isinstance(meta.get("options"), dict)):
    raise ValueError(f"{meta_path} is not a {MODEL_FILE} of save_pretrained (a JSON object with "
                     "'model' and 'options'); convert the weights again")
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{meta_path}: format_version {meta.get('format_version')} is not "
                     f"{FORMAT_VERSION}; convert the weights again with this version")
  options = meta.get("options", {})
  if "kernels" in options:   # the `compute` option's name in files written before it was renamed
    options.setdefault("compute", options.pop("kernels"))
  return meta


def load_pretrained(directory: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
  """Reads a directory written by `save_pretrained`: (model name, create_model options, variables).

  The variables come back as numpy arrays on the host.
  """
  import orbax.checkpoint as ocp

  directory = os.path.abspath(directory)
  meta = read_model_file(directory)
  with ocp.StandardCheckpointer() as checkpointer:
    variables = checkpointer.restore(os.path.join(directory, VARIABLES_DIR))
  variables = jax.tree.map(np.asarray, variables)
  return meta["model"], dict(meta["options"]), dict(variables)
