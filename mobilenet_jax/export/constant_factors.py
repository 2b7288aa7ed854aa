"""Constant factors moved into the next linear layer's weights, for full-integer LiteRT models.

MobileNetV3 divides by constants between its layers: hard-swish is `x * relu6(x + 3) / 6` (V3
paper section 5.2), the squeeze-and-excite gate `relu6(z + 3) / 6`, and every global average pool
a sum divided by H * W. In an int8 `.tflite` file each of those divisions is a MUL of its own (by a
quantized constant), and LiteRT's XNNPACK delegate leaves those to TFLite's reference kernels, so
the network splits into ~20 XNNPACK partitions and runs slower than in float (`docs/deploy.md`).

Multiplying by a positive constant commutes with everything up to the next linear layer (sums,
reshapes, products with other maps, ReLU and ReLU6 with their bounds divided by the factor, a bias
divided by it), and the linear layer absorbs it into its weights:
`W (x / 6) = (W / 6) x`. `fold_constant_factors` rewrites a traced program that way: each value
carries a pending factor, the next convolution or matrix product takes it into its (constant)
weights, and the factor never becomes an operation of its own. Where two maps with different
factors meet in a sum (V3-Large's stem output and its first block's), the one that ends in a
convolution and its bias is computed with its weights and bias scaled to match; where neither can
be, or before an operation that does not commute, the factor is applied as a plain multiplication.
The values are the program's up to float rounding.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.extend import core as jex_core

# Operations that commute with a positive factor on their first operand (the others unchanged):
# f(k x) = k f(x).
_COMMUTING = frozenset({
    "broadcast_in_dim", "reshape", "squeeze", "expand_dims", "transpose", "reduce_sum", "copy",
    "copy_p", "convert_element_type", "rev", "slice"})
_LINEAR_IN_LHS = frozenset({"conv_general_dilated", "dot_general"})
_NESTED = frozenset({"jit", "pjit", "custom_jvp_call", "custom_vjp_call", "closed_call",
                     "core_call"})


class _Scaled:
  """A value computed from the input: the program's value is `value * factor`. `rescaled(g)`, where
  given, computes the value again to carry the factor g instead (a convolution with its weights
  scaled, and its bias), so that two maps can meet in a sum with the same factor."""

  def __init__(self, value: Any, factor: float = 1.0,
               rescaled: Optional[Callable[[float], Any]] = None):
    self.value, self.factor, self.rescaled = value, factor, rescaled

  def materialized(self) -> Any:
    return _scaled_constant(self.value, self.factor)


def fold_constant_factors(function: Callable[[jax.Array], jax.Array],
                          example: jax.ShapeDtypeStruct) -> Callable[[jax.Array], jax.Array]:
  """`function` of one array, with its divisions and multiplications by scalar constants moved
  into the next convolution's or matrix product's weights (see the module docstring)."""
  closed = jax.make_jaxpr(function)(example)

  def folded(x: jax.Array) -> jax.Array:
    outs = _evaluate(closed.jaxpr, list(closed.consts), [_Scaled(x)])
    return _materialize(outs[0])

  return folded


def _scalar(value: Any) -> Any:
  """The float of a one-element constant (a literal or a closed-over array); else None."""
  if isinstance(value, (_Scaled, jax.core.Tracer)):
    return None
  array = np.asarray(value)
  if array.size != 1 or not np.issubdtype(array.dtype, np.floating):
    return None
  return float(array.reshape(()))


def _scaled_constant(value: Any, factor: float) -> Any:
  """`value * factor` (a multiplication only where the factor is not 1)."""
  return value if factor == 1.0 else value * np.float32(factor)


def _materialize(value: Any) -> Any:
  return value.materialized() if isinstance(value, _Scaled) else value


def _bind(eqn: Any, args: Sequence[Any]) -> list[Any]:
  with eqn.ctx.manager:   # as jax.core.eval_jaxpr binds an equation
    outs = eqn.primitive.bind(*args, **eqn.primitive.get_bind_params(eqn.params))
  return list(outs) if eqn.primitive.multiple_results else [outs]


def _evaluate(jaxpr: jex_core.Jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
  env: dict[Any, Any] = {}
  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  read = lambda v: v.val if isinstance(v, jex_core.Literal) else env[v]
  for eqn in jaxpr.eqns:
    env.update(zip(eqn.outvars, _equation(eqn, [read(v) for v in eqn.invars])))
  return [read(v) for v in jaxpr.outvars]


def _equation(eqn: Any, ins: list[Any]) -> list[Any]:
  """One equation on values that may carry factors; returns its outputs (with their factors)."""
  name = eqn.primitive.name
  scaled = [i for i, x in enumerate(ins) if isinstance(x, _Scaled)]
  if not scaled:
    return _bind(eqn, ins)
  if name in _NESTED:
    inner = eqn.params.get("call_jaxpr", eqn.params.get("jaxpr"))
    if inner is not None and len(ins) == len(inner.jaxpr.invars):
      return _evaluate(inner.jaxpr, list(inner.consts), ins)
  first = ins[0]
  floating = all(jax.numpy.issubdtype(v.aval.dtype, jax.numpy.floating) for v in eqn.outvars)
  if name in _COMMUTING and scaled == [0] and floating:
    return [_Scaled(out, first.factor) for out in _bind(eqn, [first.value] + ins[1:])]
  if name in _LINEAR_IN_LHS and scaled == [0]:   # W (k x) = (k W) x: k into the constant weights
    linear = lambda g: _bind(eqn, [first.value, _scaled_constant(ins[1], first.factor / g)])[0]
    return [_Scaled(linear(1.0), 1.0, linear)]
  if name in ("mul", "div") and scaled == [0] and (constant := _scalar(ins[1])) and constant > 0:
    factor = first.factor * constant if name == "mul" else first.factor / constant
    return [_Scaled(first.value, factor)]
  if name == "mul" and scaled == [1] and (constant := _scalar(ins[0])) and constant > 0:
    return [_Scaled(ins[1].value, ins[1].factor * constant)]
  if name in ("mul", "div") and scaled == [0] or name == "mul" and scaled == [1]:
    # (k x) c = k (x c) and (k x) / c = k (x / c) for a constant map c (a per-channel scale).
    operands = [x.value if isinstance(x, _Scaled) else x for x in ins]
    return [_Scaled(_bind(eqn, operands)[0], ins[scaled[0]].factor)]
  if name == "mul" and len(scaled) == 2:          # (a x)(b y) = ab (x y)
    return [_Scaled(_bind(eqn, [ins[0].value, ins[1].value])[0], ins[0].factor * ins[1].factor)]
  if name in ("add", "sub") and len(scaled) == 2:
    a, b = ins
    if a.factor != b.factor and b.rescaled is not None:
      b = _Scaled(b.rescaled(a.factor), a.factor)
    elif a.factor != b.factor and a.rescaled is not None:
      a = _Scaled(a.rescaled(b.factor), b.factor)
    if a.factor == b.factor:   # a x + a y = a (x + y)
      return [_Scaled(_bind(eqn, [a.value, b.value])[0], a.factor)]
  if name in ("add", "sub", "max", "min") and len(scaled) == 1:
    # k x + c = k (x + c / k); max(k x, c) = k max(x, c / k) for k > 0 (a bias, ReLU's bounds).
    i, factor = scaled[0], ins[scaled[0]].factor

    def offset(g: float, value: Any) -> Any:
      operands = list(ins)
      operands[i], operands[1 - i] = value, _scaled_constant(ins[1 - i], 1.0 / g)
      return _bind(eqn, operands)[0]

    if factor > 0:
      rescaled = ins[i].rescaled
      again = None if rescaled is None or name not in ("add", "sub") else (
          lambda g: offset(g, rescaled(g)))
      return [_Scaled(offset(factor, ins[i].value), factor, again)]
  if name == "clamp" and scaled == [1] and ins[1].factor > 0:   # clamp(lo, k x, hi)
    factor = ins[1].factor
    low, high = (_scaled_constant(ins[j], 1.0 / factor) for j in (0, 2))
    return [_Scaled(_bind(eqn, [low, ins[1].value, high])[0], factor)]
  outs = _bind(eqn, [_materialize(x) for x in ins])
  return [_Scaled(out) for out in outs]
