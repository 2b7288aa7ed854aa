"""`config.init_from`: start from converted/pretrained weights (`mobilenet_jax.pretrained` format).

`resolve_config` fills what the config leaves unset (None) from the checkpoint's model.json: the
architecture and its options, and the input normalisation the weights were trained with (a set
value that differs is kept, with a warning naming both). The classifier keeps its fresh
initialisation when its shape differs (fine-tuning on a dataset with another number of classes);
any other difference means another architecture or width and is an error that names the first
mismatching parameter. Checked against shapes only, before compiling.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Mapping, Optional

import ml_collections
import numpy as np
from flax import traverse_util

from mobilenet_jax import pretrained
from mobilenet_jax.train.checkpointing import first_mismatch
from mobilenet_jax.weights import read_checkpoint

CLASSIFIER = "classifier"
COLLECTIONS = ("params", "batch_stats")
# Options that change the numbers but not the shapes: a mismatch would load silently and score
# badly (TF checkpoints pad "same" and use BatchNorm epsilon 1e-3; PyTorch "symmetric" and 1e-5).
NUMERIC_OPTIONS = ("padding", "bn_epsilon")


# model.json options that are not architecture: the class count comes from the dataset.
_DATASET_OPTIONS = ("num_classes",)


@dataclasses.dataclass
class Resolved:
  """The config with the checkpoint's values filled in, and what to tell the user about it."""
  config: ml_collections.ConfigDict
  notes: list[str]


def resolve_config(config: ml_collections.ConfigDict) -> Resolved:
  """`config` with its unset (None) `model.*` fields and `dataset.normalization` taken from the
  `init_from` checkpoint's model.json; unchanged without `init_from`.

  A normalisation the config sets that differs from the one the weights were trained with is kept
  (the user may mean it) with a warning that names both.
  """
  if not config.init_from:
    return Resolved(config, [])
  meta = pretrained.read_model_file(config.init_from)
  config = ml_collections.ConfigDict(config.to_dict())
  taken, kept = [], []
  with config.unlocked():
    if config.model.get("name") is None:
      config.model.name = meta["model"]
      taken.append(f"name={meta['model']}")
    for key, value in meta["options"].items():
      if key in _DATASET_OPTIONS:
        continue
      if config.model.get(key) is None:
        config.model[key] = value
        taken.append(f"{key}={value!r}")
      elif config.model[key] != value:
        kept.append(f"{key}={config.model[key]!r} (the checkpoint's: {value!r})")
  notes = [f"init_from {config.init_from}: {meta['model']} {meta['options']}"]
  if taken:
    notes.append("model from the checkpoint: " + ", ".join(taken))
  if kept:
    notes.append("model options set by the config: " + ", ".join(kept))
  recorded = (meta.get("preprocessing") or {}).get("normalization")
  given = config.dataset.get("normalization")
  if given is None:
    config.dataset.normalization = recorded or "imagenet"
    how = "as the weights expect (model.json)" if recorded else "the default; model.json records none"
    notes.append(f"input normalization {config.dataset.normalization!r}: {how}")
  elif recorded and given != recorded:
    message = (f"dataset.normalization={given!r} but the init_from weights were trained with "
               f"{recorded!r} inputs ({config.init_from}/model.json): the pretrained features will "
               f"see shifted inputs; drop --config.dataset.normalization (or set it to {recorded!r}) "
               "unless you mean it")
    warnings.warn(message, stacklevel=2)
    notes.append("warning: " + message)
  return Resolved(config, notes)


@dataclasses.dataclass
class Loaded:
  """Pretrained values for a fresh model: {collection: {'path/to/leaf': array}}, and a summary."""
  values: dict[str, dict[str, np.ndarray]]
  loaded: int                    # arrays taken from the checkpoint
  reinitialized: list[str]       # parameter paths left at their fresh initialisation
  folded_batch_norm: bool        # every BatchNorm has identity statistics (a TFLite file's weights)

  def summary(self) -> str:
    text = f"loaded {self.loaded} arrays"
    if self.reinitialized:
      text += f"; re-initialised {', '.join(self.reinitialized)} (another number of classes)"
    return text


def load_initial_variables(directory: str, template: dict[str, Any],
                           model_options: Optional[Mapping[str, Any]] = None
                           ) -> dict[str, dict[str, np.ndarray]]:
  """`load(...).values`: {collection: {'path/to/leaf': numpy array}}."""
  return load(directory, template, model_options).values


def load(directory: str, template: dict[str, Any],
         model_options: Optional[Mapping[str, Any]] = None) -> Loaded:
  """The pretrained values to put into a fresh model whose variables look like `template`.

  template: {'params', 'batch_stats'} trees of arrays or `jax.ShapeDtypeStruct`s.
  model_options: the config's `model` fields; `padding` and `bn_epsilon` must equal the
    checkpoint's (an error says which `--config.model.*` to set).
  Returns the values {collection: {'path/to/leaf': numpy array}}, without the classifier when it
  is to be re-initialised, and what was loaded.
  """
  checkpoint = read_checkpoint(directory)
  name, options, loaded = checkpoint.model_name, checkpoint.options, checkpoint.variables
  for key in NUMERIC_OPTIONS:
    if model_options and key in options and key in model_options and \
        model_options[key] != options[key]:
      raise ValueError(f"init_from={directory} was trained with {key}={options[key]!r} but the "
                       f"config has model.{key}={model_options[key]!r}; set "
                       f"--config.model.{key}={options[key]} (its logits would differ otherwise)")
  result, reinitialized = {}, []
  for collection in COLLECTIONS:
    want = traverse_util.flatten_dict(template.get(collection, {}), sep="/")
    have = traverse_util.flatten_dict(dict(loaded.get(collection, {})), sep="/")
    want_shapes = {k: tuple(v.shape) for k, v in want.items()}
    have_shapes = {k: tuple(np.shape(v)) for k, v in have.items()}
    if collection == "params":  # another number of classes: keep the fresh classifier
      head = [k for k in want if k.split("/")[0] == CLASSIFIER]
      if all(k in have for k in head) and any(have_shapes[k] != want_shapes[k] for k in head):
        reinitialized = [f"{k} {have_shapes[k]} -> {want_shapes[k]}" for k in head]
        have = {k: v for k, v in have.items() if k not in head}
        have_shapes.update({k: want_shapes[k] for k in head})
    mismatch = first_mismatch(want_shapes, have_shapes)
    if mismatch:
      raise ValueError(f"init_from={directory} holds {name} {options}, which does not fit this "
                       f"config's model: {collection}/{mismatch}. Set model.* to match it.")
    result[collection] = {k: np.asarray(v, want[k].dtype) for k, v in have.items()}
  stats = result.get("batch_stats", {})
  folded = bool(stats) and all(
      np.all(v == (0.0 if k.endswith("/mean") else 1.0)) for k, v in stats.items())
  return Loaded(result, sum(len(v) for v in result.values()), reinitialized, folded)


def merge(variables: dict[str, Any], pretrained_values: dict[str, dict[str, np.ndarray]]
          ) -> dict[str, Any]:
  """`variables` with the leaves of `pretrained_values` replaced (host numpy trees)."""
  merged = {}
  for collection in COLLECTIONS:
    flat = traverse_util.flatten_dict(variables.get(collection, {}), sep="/")
    flat.update(pretrained_values.get(collection, {}))
    merged[collection] = traverse_util.unflatten_dict(flat, sep="/")
  return merged
