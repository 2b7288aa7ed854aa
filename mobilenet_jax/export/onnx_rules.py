"""Graph rewrites that give an exported ONNX MobileNet the operators ONNX Runtime fuses.

A traced JAX program spells activations and pooling with elementwise primitives. Written back as
the ONNX operators they are, ONNX Runtime fuses them into the preceding convolution (as it does for
torchvision's export); spelled out, each is one more pass over the activations:

- `max(x, 0)` (ReLU) -> `Relu`; `min(max(x, 0), 6)` (ReLU6) -> `Clip` (onnxscript's own rule);
- `x * relu6(x + 3) / 6` -> `HardSwish`, `relu6(x + 3) / 6` -> `HardSigmoid` (onnxscript's rules);
- `ReduceSum(x, axes) / n` over n elements (global average pooling) -> `ReduceMean`.

Rules are onnxscript pattern rewrites (the rewriter PyTorch's exporter uses).
"""

from __future__ import annotations

import numpy as np
from onnxscript import rewriter
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules import common as common_rules


class MaxZeroToRelu(pattern.RewriteRuleClassBase):
  """Max(x, 0) -> Relu(x)."""

  def pattern(self, op, x, zero):
    return op.Max(x, zero)

  def check(self, context, x, zero, **_):
    result = pattern.MatchResult()
    value = zero.const_value
    if value is None or value.numpy().size != 1 or float(value.numpy().reshape(())) != 0.0:
      return result.fail("the second operand is not a constant 0")
    return result

  def rewrite(self, op, x, zero):
    return op.Relu(x)


class SumOverCountToMean(pattern.RewriteRuleClassBase):
  """Div(ReduceSum(x, axes, keepdims), n) -> ReduceMean(x, axes, keepdims) when n is the number of
  elements summed (static in x's shape)."""

  def pattern(self, op, x, axes, count):
    return op.Div(op.ReduceSum(x, axes, _allow_other_attributes=True, _outputs=["total"]), count)

  def check(self, context, x, axes, count, total, **_):
    result = pattern.MatchResult()
    if axes.const_value is None or count.const_value is None or x.shape is None:
      return result.fail("axes or divisor not constant, or x's shape unknown")
    divisor = count.const_value.numpy()
    dims = [x.shape[int(a)] for a in axes.const_value.numpy().reshape(-1)]
    if divisor.size != 1 or not all(isinstance(d, int) for d in dims):
      return result.fail("divisor not a scalar, or a reduced axis not static")
    if float(divisor.reshape(())) != float(np.prod(dims)):
      return result.fail("divisor is not the number of elements summed")
    return result

  def rewrite(self, op, x, axes, count, total):
    keepdims = total.producer().attributes.get_int("keepdims", 1)
    return op.ReduceMean(x, axes, keepdims=keepdims)


def activation_and_pooling_rules() -> rewriter.RewriteRuleSet:
  return rewriter.RewriteRuleSet([MaxZeroToRelu().rule(), SumOverCountToMean().rule()],
                                 commute=True)


def fuse_operators(model):
  """onnxscript's optimizer (constant folding; Min/Max -> Clip and its other default rules), its
  HardSwish/HardSigmoid fusions, then the rules above. Takes and returns an `onnx.ModelProto`."""
  from onnxscript import optimizer

  model = optimizer.optimize(model)
  model = rewriter.rewrite(model, common_rules.fuse_hardswish_rules())
  return rewriter.rewrite(model, activation_and_pooling_rules())
