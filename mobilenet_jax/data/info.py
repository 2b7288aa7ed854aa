"""`DatasetInfo`: what the trainer needs to know about a dataset before building the model."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Name, number of classes and whole-split sizes (all hosts together)."""
  name: str
  num_classes: int
  num_train_examples: int
  num_eval_examples: int
