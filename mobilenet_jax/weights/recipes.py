"""The eval recipe that weights expect: the recorded one, else the one their padding implies."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from mobilenet_jax.data.eval_recipes import EvalRecipe, tf_slim, torchvision


def recorded_or_assumed(preprocessing: Optional[Mapping[str, Any]], padding: str, resolution: int,
                        where: str) -> tuple[EvalRecipe, str]:
  """(recipe, where it comes from): `preprocessing` (an `EvalRecipe.to_dict()`) when recorded,
  else TF-slim's for TF weights (padding "same") or torchvision's for PyTorch weights."""
  if preprocessing:
    try:
      return EvalRecipe.from_dict(preprocessing), f"recorded in {where}"
    except ValueError as e:
      raise ValueError(f"{where}: its recorded preprocessing is damaged ({e}); convert or export "
                       "the weights again") from None
  if padding == "same":
    return tf_slim(resolution), "assumed: TF weights (padding 'same'), none recorded"
  return (torchvision(resolution),
          "assumed: PyTorch weights (padding 'symmetric'), none recorded")
