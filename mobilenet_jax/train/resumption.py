"""What a start on a workdir that already holds a run may do: resume it, or say why not.

- The config may change where the checkpoint and the data keep their meaning: a longer schedule
  (`num_epochs`, `num_train_steps`), logging, evaluation and checkpoint intervals, the input
  pipeline's speed options. Each change is logged. A change of what the checkpoint holds or what
  the network sees (the model, the resolution, the dataset and its normalisation, the optimizer,
  EMA on or off) is refused, naming the fields: Orbax refuses a restore whose shapes differ, and a
  resolution or dataset change would not even reach that check; such a run belongs in a new workdir.
- A finished run (its last step checkpointed and evaluated) is not trained or evaluated again:
  the start says so and returns its final metrics (as `make` does with an up-to-date target).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import ml_collections
from absl import logging

from mobilenet_jax.train.metrics import METRICS_FILE, read_metrics

CONFIG_FILE = "config.json"
# Fields whose change makes the checkpoint mean something else (prefixes end with ".").
REFUSED_CHANGES = ("model.", "resolution", "dataset.name", "dataset.train_split",
                   "dataset.normalization", "optimizer.name", "trainable")
# Model options that choose an implementation, not the network (same weights, same function).
IMPLEMENTATION_OPTIONS = ("model.compute",)


class ConfigChangedError(ValueError):
  """The config differs from the workdir's run in fields its checkpoints depend on."""


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  out = {}
  for key, value in tree.items():
    out.update(_flat(value, f"{prefix}{key}."))
  return out


def _refused(key: str, old: Any, new: Any, missing: object) -> bool:
  if missing in (old, new) or key in IMPLEMENTATION_OPTIONS:  # a field one version lacks
    return False
  if key == "ema_decay":  # EMA on <-> off: the state gains or loses its EMA copy
    return bool(old) != bool(new)
  return any(key == r or (r.endswith(".") and key.startswith(r)) for r in REFUSED_CHANGES)


def check_config_change(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Compares `config` with the `config.json` of the run in `workdir` (see the module docstring):
  a ConfigChangedError naming the refused fields, a log line for the others."""
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path) as f:
      stored = _flat(json.load(f))
  except FileNotFoundError:
    return
  except (OSError, ValueError) as e:
    logging.warning("cannot read %s (%s): the config of the run there is not compared", path, e)
    return
  new = _flat(json.loads(config.to_json_best_effort()))
  missing = object()
  changed = {k: (stored.get(k, missing), new.get(k, missing)) for k in sorted(set(stored) | set(new))
             if stored.get(k, missing) != new.get(k, missing)}
  refused = {k: v for k, v in changed.items() if _refused(k, *v, missing)}
  if refused:
    fields = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in refused.items())
    raise ConfigChangedError(f"the run in {workdir} was trained with another config ({fields}): its "
                     "checkpoints do not fit this one. Pass another --workdir for the new config, "
                     f"or run again with the config of {path}")
  if changed:
    shown = lambda v: "(none)" if v is missing else repr(v)
    logging.warning("resuming %s with config changes: %s", workdir, ", ".join(
        f"{k} {shown(old)} -> {shown(new)}" for k, (old, new) in changed.items()))


def final_evaluation(workdir: str, step: int) -> Optional[dict[str, Any]]:
  """The evaluation record of `step` in metrics.jsonl (None: that step was not evaluated)."""
  if not os.path.exists(os.path.join(workdir, METRICS_FILE)):
    return None
  records = [r for r in read_metrics(workdir) if r.get("step") == step and "eval_examples" in r]
  return records[-1] if records else None
