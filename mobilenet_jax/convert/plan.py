"""The weight-bearing layers of one of our networks, in order, with the shapes of their variables.

A converter names, for each `Unit` below, the layer of the reference implementation that holds its
weights; `convert.assemble` then copies and checks them. The layers come from the network's own walk
(`models.spec.network_layers`, which the builder uses too), each opened into its units as the blocks
in `models.blocks` create them; `assemble.check_against_model` verifies every conversion against
the variables Flax itself creates, so the two cannot drift apart silently.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

from mobilenet_jax.models.spec import LayerKind, NetworkLayer, NetworkSpec, network_layers

# Kinds of unit: "conv" and "depthwise" are ConvNormAct (kernel + BatchNorm), "dense" a Dense layer.
CONV, DEPTHWISE, DENSE = "conv", "depthwise", "dense"


@dataclasses.dataclass(frozen=True)
class Unit:
  """One layer with weights.

  role: stem | conv (V1 full-conv block) | depthwise | pointwise (V1) | expand | se_reduce |
        se_expand | project (V2/V3) | last_conv | head | classifier.
  block: index of the block (None outside blocks); index: position of the layer's module inside its
  block, counting the squeeze-excite pair once (torchvision numbers its sub-modules this way);
  expands: the block has a 1x1 expansion conv (timm names its layers differently when it has not).
  """
  path: tuple[str, ...]
  kind: str
  role: str
  in_features: int
  out_features: int
  kernel_size: int = 1
  block: Optional[int] = None
  index: int = 0
  expands: bool = False

  def variable_shapes(self) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{(collection, *path): shape} of the Flax variables of this unit."""
    if self.kind == DENSE:
      return {("params", *self.path, "kernel"): (self.in_features, self.out_features),
              ("params", *self.path, "bias"): (self.out_features,)}
    k = self.kernel_size
    kernel = (k, k, 1, self.out_features) if self.kind == DEPTHWISE else (
        k, k, self.in_features, self.out_features)
    norm = (self.out_features,)
    return {("params", *self.path, "conv", "kernel"): kernel,
            ("params", *self.path, "norm", "scale"): norm,
            ("params", *self.path, "norm", "bias"): norm,
            ("batch_stats", *self.path, "norm", "mean"): norm,
            ("batch_stats", *self.path, "norm", "var"): norm}


def probe(role: str) -> Unit:
  """A unit that only carries a role, to ask a naming scheme where that layer lives."""
  return Unit((role,), DENSE, role, 0, 0)


def _layer_units(layer: NetworkLayer) -> Iterator[Unit]:
  """The units with weights of one layer of the network's walk."""
  name, spec, in_features, i = layer.name, layer.spec, layer.in_features, layer.block_index
  k, out = spec.kernel_size, spec.features
  if spec.kind == LayerKind.CONV:
    yield Unit((name,), CONV, name if i is None else "conv", in_features, out, k, i)
  elif spec.kind == LayerKind.SEPARABLE:
    yield Unit((name, "depthwise"), DEPTHWISE, "depthwise", in_features, in_features, k, i, 0)
    yield Unit((name, "pointwise"), CONV, "pointwise", in_features, out, 1, i, 1)
  else:
    expanded = spec.expanded_features
    expands = expanded != in_features   # InvertedResidual skips the expansion conv when t = 1
    unit = lambda *a, **kw: Unit(*a, block=i, expands=expands, **kw)  # noqa: E731
    index = 0
    if expands:
      yield unit((name, "expand"), CONV, "expand", in_features, expanded, 1, index=index)
      index += 1
    yield unit((name, "depthwise"), DEPTHWISE, "depthwise", expanded, expanded, k, index=index)
    index += 1
    if spec.se_features is not None:
      se = spec.se_features
      yield unit((name, "se", "reduce"), DENSE, "se_reduce", expanded, se, index=index)
      yield unit((name, "se", "expand"), DENSE, "se_expand", se, expanded, index=index)
      index += 1
    yield unit((name, "project"), CONV, "project", expanded, out, 1, index=index)


def network_units(spec: NetworkSpec, num_classes: int, in_channels: int = 3) -> list[Unit]:
  """Every layer with weights of `MobileNet` built from `spec`, in forward order."""
  units, features = [], in_channels
  for layer in network_layers(spec, in_channels):
    units.extend(_layer_units(layer))
    features = layer.out_features
  if spec.head_features:
    units.append(Unit(("head",), DENSE, "head", features, spec.head_features))
    features = spec.head_features
  if num_classes:
    units.append(Unit(("classifier",), DENSE, "classifier", features, num_classes))
  return units
