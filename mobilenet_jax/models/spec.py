"""A network as data: the resolved architecture table (`NetworkSpec`) and the one walk over its layers.

Each MobileNet file (`mobilenet_v1.py`, `mobilenet_v2.py`, `mobilenet_v3.py`) writes its paper's table
as data and turns it into a `NetworkSpec` with concrete channel counts for a width multiplier.
`network_layers(spec)` walks it in forward order, giving each layer its variables' name, its input and
output channels and strides; the builder, `MobileNet.feature_channels`, the weight converters'
plan, and the XLA:CPU inference program all read the network through it.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Iterator, Optional


class LayerKind(str, enum.Enum):
  """What one row of a table builds."""
  CONV = "conv"                            # kxk conv + norm + act: the stem, a V1 full-conv layer
  SEPARABLE = "separable"                  # V1 depthwise separable block (V1 paper Figure 3)
  INVERTED_RESIDUAL = "inverted_residual"  # V2/V3 block (V2 paper Figure 3, V3 paper Figure 4)


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """One layer of a network with concrete widths; `kind` a `LayerKind` (or its value)."""
  kind: LayerKind
  features: int
  kernel_size: int = 3
  stride: int = 1
  activation: str = "relu6"
  expanded_features: Optional[int] = None
  se_features: Optional[int] = None

  def __post_init__(self) -> None:
    object.__setattr__(self, "kind", LayerKind(self.kind))


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
  """A whole network: stem, blocks, optional last 1x1 conv, optional hidden head layer.

  head_features > 0 adds V3's pooled 1x1 conv with bias and no norm (V3 paper section 5.2, Figure 5);
  it is a Dense layer on the pooled vector.
  """
  stem: LayerSpec
  blocks: tuple[LayerSpec, ...]
  last_conv: Optional[LayerSpec] = None
  head_features: int = 0
  head_activation: str = "hard_swish"
  default_dropout: float = 0.2

  @property
  def layers(self) -> tuple[LayerSpec, ...]:
    return (self.stem, *self.blocks, *((self.last_conv,) if self.last_conv else ()))


@dataclasses.dataclass(frozen=True)
class NetworkLayer:
  """One layer of the walk: its module's name in the variables ("stem", "blocks_3", "last_conv"),
  its table row, and the channels and strides (relative to the image) of its input and output.
  `block_index` is the layer's index among the blocks (None for the stem and the last conv)."""
  name: str
  spec: LayerSpec
  in_features: int
  in_stride: int
  out_stride: int
  block_index: Optional[int] = None

  @property
  def kind(self) -> LayerKind:
    return self.spec.kind

  @property
  def out_features(self) -> int:
    return self.spec.features


def network_layers(spec: NetworkSpec, in_features: int = 3) -> Iterator[NetworkLayer]:
  """The stem, the blocks and the last conv of `spec` in forward order (the pooled head and the
  classifier, which are not in the table's rows, are not walked)."""
  named = [("stem", spec.stem, None)]
  named += [(f"blocks_{i}", layer, i) for i, layer in enumerate(spec.blocks)]
  if spec.last_conv is not None:
    named.append(("last_conv", spec.last_conv, None))
  stride = 1
  for name, layer, block_index in named:
    yield NetworkLayer(name, layer, in_features, stride, stride * layer.stride, block_index)
    in_features, stride = layer.features, stride * layer.stride


def with_small_input(spec: NetworkSpec, layers: int) -> NetworkSpec:
  """`spec` with its first `layers` stride-2 layers (the stem first) at stride 1: how CIFAR papers
  adapt ImageNet networks to 32x32 images (e.g. MobileNetV2 on CIFAR-10 with the stem and the
  first stride-2 stage at stride 1), keeping every weight shape."""
  strided = [i for i, layer in enumerate(spec.layers) if layer.stride > 1][:layers]
  layers_ = [dataclasses.replace(layer, stride=1) if i in strided else layer
             for i, layer in enumerate(spec.layers)]
  blocks = tuple(layers_[1:1 + len(spec.blocks)])
  return dataclasses.replace(spec, stem=layers_[0], blocks=blocks,
                             last_conv=layers_[-1] if spec.last_conv else None)


def check_positive(name: str, value: float) -> None:
  if not value > 0:
    raise ValueError(f"{name} must be > 0, got {value!r}; the papers use values such as 1.0, 0.75, "
                     "0.5 or 0.35")
