"""Parameter and multiply-add counts, per layer and per layer type, the way the papers count them.

MAdds (V1 paper section 3.1, V2 section 3.4): multiply-adds of every convolution and fully connected
layer for one image; normalisation, activations, pooling and additions are not counted. Each
convolution's cost is counted over its full kernel at every output pixel (zero-padded taps included),
as in the papers' formula Dk*Dk*M*N*DF*DF.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from mobilenet_jax.models.layers import ConvNormAct

@dataclasses.dataclass(frozen=True)
class LayerCost:
  """Cost of one convolution or dense layer for one image."""
  path: str          # module path in the variables tree, e.g. "blocks_3/expand/conv"
  kind: str          # "conv_kxk" (standard conv, k > 1), "conv_1x1", "depthwise", "se", "fc"
  kernel_size: int
  stride: int
  in_features: int
  out_features: int
  out_size: tuple[int, int]
  weights: int       # kernel entries (what V1 paper Table 2 counts)
  params: int        # weights and bias of this layer (normalisation excluded)
  madds: int


def count_params(variables_or_params: Mapping[str, Any]) -> int:
  """Number of trainable parameters: the `params` collection (or a bare params tree)."""
  tree = variables_or_params
  if isinstance(tree, Mapping) and "params" in tree:
    tree = tree["params"]
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def _classify(module: nn.Module, path: str, in_features: int) -> str:
  if isinstance(module, nn.Dense):
    return "se" if "/se/" in f"/{path}/" else "fc"
  if module.feature_group_count > 1 and module.feature_group_count == in_features:
    return "depthwise"
  return "conv_1x1" if tuple(module.kernel_size) == (1, 1) else "conv_kxk"


def layer_costs(model: nn.Module, resolution: int = 224, channels: int = 3) -> list[LayerCost]:
  """Every convolution and dense layer of `model` on one `resolution`x`resolution` image, in order.

  Runs only shape inference (`jax.eval_shape`), so it is instant even for the largest networks.
  """
  costs: list[LayerCost] = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != "__call__" or not isinstance(module, (nn.Conv, nn.Dense)):
      return out
    path = "/".join(module.path)
    x = args[0]
    cin, cout = x.shape[-1], out.shape[-1]
    kind = _classify(module, path, cin)
    if isinstance(module, nn.Dense):
      k, stride, size = 1, 1, (1, 1)
      weights = madds = cin * cout
      params = weights + (cout if module.use_bias else 0)
    else:
      k = module.kernel_size[0]
      stride = module.strides if isinstance(module.strides, int) else module.strides[0]
      size = (out.shape[1], out.shape[2])
      per_output = k * k * (1 if kind == "depthwise" else cin // module.feature_group_count)
      weights = per_output * cout
      params = weights + (cout if getattr(module, "use_bias", False) else 0)
      madds = weights * size[0] * size[1]
    costs.append(LayerCost(path, kind, k, stride, cin, cout, size, weights, params, madds))
    return out

  images = jnp.zeros((1, resolution, resolution, channels), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  return costs


def count_madds(model: nn.Module, resolution: int = 224) -> int:
  """Multiply-adds of one forward pass on one `resolution`x`resolution` image (papers' convention)."""
  return sum(c.madds for c in layer_costs(model, resolution))


def breakdown_by_kind(costs: list[LayerCost]) -> dict[str, dict[str, float]]:
  """Share of MAdds and of weights (conv kernels and dense matrices, as V1 paper Table 2 counts:
  no biases, no normalisation) per layer type."""
  madds, params = collections.Counter(), collections.Counter()
  for c in costs:
    madds[c.kind] += c.madds
    params[c.kind] += c.weights
  total_m, total_p = sum(madds.values()), sum(params.values())
  return {kind: {"madds": madds[kind], "params": params[kind],
                 "madds_pct": 100 * madds[kind] / total_m, "params_pct": 100 * params[kind] / total_p}
          for kind in madds}


@dataclasses.dataclass(frozen=True)
class SeparableSaving:
  """A depthwise separable layer against the standard kxk convolution it replaces (V1 eq. 5)."""
  path: str
  kernel_size: int
  out_features: int
  separable_madds: int
  standard_madds: int

  @property
  def ratio(self) -> float:
    return self.separable_madds / self.standard_madds

  @property
  def paper_ratio(self) -> float:
    """1/N + 1/Dk^2, the paper's closed form."""
    return 1 / self.out_features + 1 / self.kernel_size ** 2


def separable_savings(costs: list[LayerCost]) -> list[SeparableSaving]:
  """For each depthwise conv directly followed by a 1x1 conv (V1's blocks), the cost ratio."""
  savings = []
  for dw, pw in zip(costs, costs[1:]):
    if dw.kind == "depthwise" and pw.kind == "conv_1x1" and pw.in_features == dw.out_features:
      h, w = dw.out_size
      standard = dw.kernel_size ** 2 * dw.in_features * pw.out_features * h * w
      savings.append(SeparableSaving(dw.path.rsplit("/", 2)[0], dw.kernel_size, pw.out_features,
                                     dw.madds + pw.madds, standard))
  return savings


class _NoNorm(nn.Module):
  """Identity in place of normalisation, so XLA's FLOP count holds only the convs and dense layers."""

  @nn.compact
  def __call__(self, x):
    return x


def xla_madds(model: nn.Module, resolution: int = 224, linear: bool = True) -> float:
  """An independent count: XLA's cost analysis of the inference forward pass, FLOPs / 2.

  linear=True removes normalisation and activations first (`norm_layer`/`activation` options), so
  what XLA counts is the convolutions and dense layers plus the few element-wise ops left (residual
  additions, SE gating, pooling). XLA counts only in-bounds kernel taps of padded convolutions, so
  it comes out slightly below the papers' convention at small maps.
  """
  if linear:
    model = model.clone(norm_layer=_NoNorm, activation=lambda x: x, conv_norm_act=ConvNormAct)
  images = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(images.shape),
                                                train=False))
  lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, images)
  analysis = lowered.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis["flops"]) / 2
