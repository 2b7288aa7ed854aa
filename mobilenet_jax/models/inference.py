"""Fast inference of a trained network: BatchNorm folded, compiled once, for the model's kernels.

    predict, predict_variables = inference_function(model, variables)
    logits = predict(predict_variables, images)       # == model.apply(variables, images) up to rounding

With the CPU kernels (`kernels="auto"` on a CPU) this is the CPU inference engine
(`xla_cpu/inference.py`: micro-batches and XLA:CPU rearrangements); elsewhere the folded network's
`apply`, jitted.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax

from mobilenet_jax.models.builder import MobileNet
from mobilenet_jax.models.fold import fold_batch_norm
from mobilenet_jax.models.kernels import resolve_kernels
from mobilenet_jax.models.xla_cpu.inference import cpu_inference_function


def inference_function(model: MobileNet, variables: Mapping[str, Any], **cpu_options: Any
                       ) -> tuple[Callable[[Any, jax.Array], jax.Array], dict[str, Any]]:
  """`(predict, predict_variables)` with `predict(predict_variables, images) -> logits`, jitted.

  `cpu_options` (`micro_batch`, `side_by_side`) are those of `cpu_inference_function`; they apply
  to the CPU kernels only.
  """
  if resolve_kernels(model.kernels) == "cpu":
    return cpu_inference_function(model, variables, **cpu_options)
  if cpu_options:
    raise ValueError(f"{sorted(cpu_options)} apply to the CPU inference program only; this model's "
                     f"kernels are {model.kernels!r}")
  folded_model, folded = fold_batch_norm(model, variables)
  return jax.jit(lambda v, images: folded_model.apply(v, images, train=False)), folded
