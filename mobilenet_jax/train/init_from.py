"""`config.init_from`: start from converted/pretrained weights (`mobilenet_jax.pretrained` format).

The classifier keeps its fresh initialisation when its shape differs (fine-tuning on a dataset with
another number of classes); any other difference means another architecture or width and is an
error that names the first mismatching parameter. Checked against shapes only, before compiling.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
from flax import traverse_util

from mobilenet_jax.train.checkpointing import first_mismatch
from mobilenet_jax.weights import read_checkpoint

CLASSIFIER = "classifier"
COLLECTIONS = ("params", "batch_stats")
# Options that change the numbers but not the shapes: a mismatch would load silently and score
# badly (TF checkpoints pad "same" and use BatchNorm epsilon 1e-3; PyTorch "symmetric" and 1e-5).
NUMERIC_OPTIONS = ("padding", "bn_epsilon")


def load_initial_variables(directory: str, template: dict[str, Any],
                           model_options: Optional[Mapping[str, Any]] = None
                           ) -> dict[str, dict[str, np.ndarray]]:
  """The pretrained values to put into a fresh model whose variables look like `template`.

  template: {'params', 'batch_stats'} trees of arrays or `jax.ShapeDtypeStruct`s.
  model_options: the config's `model` fields; `padding` and `bn_epsilon` must equal the
    checkpoint's (an error says which `--config.model.*` to set).
  Returns {collection: {'path/to/leaf': numpy array}}, without the classifier when it is to be
  re-initialised.
  """
  checkpoint = read_checkpoint(directory)
  name, options, loaded = checkpoint.model_name, checkpoint.options, checkpoint.variables
  for key in NUMERIC_OPTIONS:
    if model_options and key in options and key in model_options and \
        model_options[key] != options[key]:
      raise ValueError(f"init_from={directory} was trained with {key}={options[key]!r} but the "
                       f"config has model.{key}={model_options[key]!r}; set "
                       f"--config.model.{key}={options[key]} (its logits would differ otherwise)")
  result = {}
  for collection in COLLECTIONS:
    want = traverse_util.flatten_dict(template.get(collection, {}), sep="/")
    have = traverse_util.flatten_dict(dict(loaded.get(collection, {})), sep="/")
    want_shapes = {k: tuple(v.shape) for k, v in want.items()}
    have_shapes = {k: tuple(np.shape(v)) for k, v in have.items()}
    if collection == "params":  # another number of classes: keep the fresh classifier
      head = [k for k in want if k.split("/")[0] == CLASSIFIER]
      if all(k in have for k in head) and any(have_shapes[k] != want_shapes[k] for k in head):
        have = {k: v for k, v in have.items() if k not in head}
        have_shapes.update({k: want_shapes[k] for k in head})
    mismatch = first_mismatch(want_shapes, have_shapes)
    if mismatch:
      raise ValueError(f"init_from={directory} holds {name} {options}, which does not fit this "
                       f"config's model: {collection}/{mismatch}. Set model.* to match it.")
    result[collection] = {k: np.asarray(v, want[k].dtype) for k, v in have.items()}
  return result


def merge(variables: dict[str, Any], pretrained_values: dict[str, dict[str, np.ndarray]]
          ) -> dict[str, Any]:
  """`variables` with the leaves of `pretrained_values` replaced (host numpy trees)."""
  merged = {}
  for collection in COLLECTIONS:
    flat = traverse_util.flatten_dict(variables.get(collection, {}), sep="/")
    flat.update(pretrained_values.get(collection, {}))
    merged[collection] = traverse_util.unflatten_dict(flat, sep="/")
  return merged
