"""A training run's workdir (`python -m mobilenet_jax.main --workdir=DIR`) as weights: the model its
latest checkpoint holds, and images prepared as the run evaluated them.

The workdir's `config.json` records how the run prepared its evaluation images (resolution,
normalisation, and a centre crop only for natural-image augmentation), and each checkpoint's `meta`
the network; the variables are the checkpoint's, or its moving average's (`ema=True`) when the run
kept one. Read without the training package: scoring and exporting never import training.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from mobilenet_jax.data.config import NO_FLIP_DATASETS
from mobilenet_jax.data.eval_recipes import EvalRecipe

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"
_RENAMED_OPTIONS = {"kernels": "compute"}   # option names of runs made before a rename


def is_training_run(directory: str) -> bool:
  return (os.path.isfile(os.path.join(directory, CONFIG_FILE))
          and os.path.isdir(os.path.join(directory, CHECKPOINTS)))


def _latest_step(directory: str) -> int:
  folder = os.path.join(directory, CHECKPOINTS)
  steps = [int(name) for name in os.listdir(folder)
           if name.isdigit() and os.path.isdir(os.path.join(folder, name, "state"))]
  if not steps:
    raise FileNotFoundError(f"{directory} holds no complete checkpoint yet; train first, or wait "
                            "for the run's first checkpoint")
  return max(steps)


def eval_recipe(config: dict[str, Any]) -> EvalRecipe:
  """How the run with this `config.json` prepared its evaluation images (data/pipeline.py): the
  whole image resized, or its central `crop_fraction` for natural-image (inception) augmentation."""
  dataset = config.get("dataset", {})
  augment = str(dataset.get("augment", "auto"))
  if augment == "auto":   # as data/sources.py resolves it
    augment = "pad_crop" if dataset.get("name") in NO_FLIP_DATASETS else "inception_crop_flip"
  natural = augment.startswith("inception_crop")
  crop = float(dataset.get("crop_fraction") or 0.875) if natural else 1.0
  return EvalRecipe("training", int(config["resolution"]), dataset.get("normalization") or "imagenet",
                    crop_fraction=crop, interpolation=dataset.get("resize_method") or "bilinear")


def read_training_run(directory: str, ema: Optional[bool] = None
                      ) -> tuple[str, dict[str, Any], dict[str, Any], EvalRecipe, int]:
  """(model name, `create_model` options, {'params', 'batch_stats'} as numpy, eval recipe, step) of
  the latest checkpoint in `directory`; `ema` None: the moving average when the run kept one."""
  import orbax.checkpoint as ocp

  directory = os.path.abspath(directory)   # Orbax restores absolute paths only
  with open(os.path.join(directory, CONFIG_FILE)) as f:
    config = json.load(f)
  step = _latest_step(directory)
  folder = os.path.join(directory, CHECKPOINTS, str(step))
  with open(os.path.join(folder, "meta", "metadata")) as f:
    meta = json.load(f)
  options = {_RENAMED_OPTIONS.get(k, k): v for k, v in meta["options"].items()}
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(os.path.join(folder, "state"))
  use_ema = state.get("ema_params") is not None if ema is None else ema
  if use_ema and state.get("ema_params") is None:
    raise ValueError(f"{directory} kept no moving average (ema_decay was 0)")
  prefix = "ema_" if use_ema else ""
  variables = {"params": state[f"{prefix}params"], "batch_stats": state[f"{prefix}batch_stats"]}
  return meta["model"], options, variables, eval_recipe(config), step
