"""A quantized `.tflite` file's 8-bit arithmetic, applied to the converted float model.

    model, variables = from_tflite("mobilenet_v1_0.25_128_quant.tflite")
    apply = eight_bit_apply(model, "mobilenet_v1_0.25_128_quant.tflite")
    logits = apply(variables, images)     # LiteRT's logits, value for value (jitted, float64)

How each layer's output is rounded to the file's grid, and why: `tflite_activations.py`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from mobilenet_jax.convert.assemble import ConversionError
from mobilenet_jax.convert.tflite_activations import interceptor, on_file_grid
from mobilenet_jax.convert.tflite_source import TfliteModel, convert_tflite_file


def eight_bit_apply(model: Any, tflite: Any) -> Callable[..., Any]:
  """`apply(variables, images)` -> float32 logits of `model` with the activations of the quantized
  `.tflite` file `tflite` (a path or a `convert.tflite_source.TfliteModel`) rounded to its grids;
  `apply(variables, images, features=True)` gives the feature maps instead.

  `variables` must be the file's (as `from_tflite` gives them; others raise ValueError): they are
  put back on the file's grids in float64 (`on_file_grid`), and the function (jitted already)
  computes in float64 inside `jax.enable_x64`, where each layer's int32 sum is exact; the
  requantization then rounds in float32 as LiteRT does.
  """
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  if not isinstance(tflite, TfliteModel):
    tflite = convert_tflite_file(str(tflite))
  if tflite.eight_bit is None:
    raise ConversionError(tflite.no_eight_bit_reason)
  intercept = interceptor(tflite.eight_bit.grids)
  wide = model.clone(dtype=jnp.float64, param_dtype=jnp.float64)
  epsilon = tflite.conversion.options["bn_epsilon"]
  last: list[Any] = [None, None]       # (variables given, the same on the file's grid)

  @functools.partial(jax.jit, static_argnames="features")
  def run(variables: Any, images: Any, features: bool) -> Any:
    with nn.intercept_methods(intercept):
      out = wide.apply(variables, jnp.asarray(images, jnp.float64), train=False, features=features)
    return jax.tree.map(lambda a: a.astype(jnp.float32), out)

  def apply(variables: Any, images: Any, features: bool = False) -> Any:
    """Logits, or with `features=True` the feature maps `{stride: map}` (on the file's grids)."""
    if last[0] is not variables:
      last[:] = variables, on_file_grid(variables, tflite.eight_bit.weight_steps, epsilon)
    with jax.enable_x64(True):
      return run(last[1], images, features)
  return apply
