"""Fast inference of a trained network: BatchNorm folded, compiled once, for the chosen compute.

    predict, predict_variables = inference_function(model, variables)
    logits = predict(predict_variables, images)       # == model.apply(variables, images) up to rounding

With `compute="cpu"` (what "auto" is on a CPU) this is the XLA:CPU inference engine
(`xla_cpu/inference.py`: micro-batches and XLA:CPU rearrangements, imported only then); with "xla"
the folded network's `apply` with XLA's own layers, jitted.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax

from mobilenet_jax.models.builder import MobileNet
from mobilenet_jax.models.fold import fold_batch_norm
from mobilenet_jax.models.layers import ConvNormAct


def inference_function(model: MobileNet, variables: Mapping[str, Any], compute: str = "auto",
                       **cpu_options: Any
                       ) -> tuple[Callable[[Any, jax.Array], jax.Array], dict[str, Any]]:
  """`(predict, predict_variables)` with `predict(predict_variables, images) -> logits`, jitted.

  `compute` ("auto", "xla", "cpu"; `mobilenet_jax/compute.py`) is chosen here, whatever the model
  was created with: inference runs the folded program, not the model's training units.
  `cpu_options` (`micro_batch`, `side_by_side`, ...) are those of `cpu_inference_function`; they
  apply to the XLA:CPU engine only.
  """
  from mobilenet_jax.compute import resolve_compute  # not at import

  if resolve_compute(compute) == "cpu":
    from mobilenet_jax.xla_cpu.inference import cpu_inference_function  # pylint: disable=g-import-not-at-top
    return cpu_inference_function(model, variables, **cpu_options)
  if cpu_options:
    raise ValueError(f"{sorted(cpu_options)} apply to the XLA:CPU inference program only; this "
                     f"one is computed with compute={compute!r}")
  folded_model, folded = fold_batch_norm(model.clone(conv_norm_act=ConvNormAct), variables)
  return jax.jit(lambda v, images: folded_model.apply(v, images, train=False)), folded
