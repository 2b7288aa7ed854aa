"""MobileNetV1 (Howard et al. 2017, arXiv:1704.04861) as its Table 1."""

from __future__ import annotations

from typing import NamedTuple

from mobilenet_jax.models.builder import MobileNet
from mobilenet_jax.models.spec import LayerKind, LayerSpec, NetworkSpec, check_positive


class V1Row(NamedTuple):
  """One depthwise separable layer of Table 1: 3x3 depthwise with `stride`, then 1x1 to `out`."""
  stride: int
  out: int


STEM_CHANNELS = 32  # Table 1, first row: conv 3x3, stride 2, 32 filters.
# Table 1 prints the second-to-last depthwise layer as "s2" twice; every implementation (TF-slim,
# Keras, timm) uses stride 2 at layer 12 and stride 1 at layer 13, giving output stride 32.
V1_TABLE: tuple[V1Row, ...] = (
    V1Row(1, 64),
    V1Row(2, 128), V1Row(1, 128),
    V1Row(2, 256), V1Row(1, 256),
    V1Row(2, 512), *(V1Row(1, 512),) * 5,
    V1Row(2, 1024), V1Row(1, 1024),
)


def v1_width(channels: int, width_multiplier: float, min_depth: int = 8) -> int:
  """Width multiplier alpha (section 4.2): `max(int(c * alpha), 8)` (TF-slim, Keras); V1 does not
  round to multiples of 8."""
  return max(int(channels * width_multiplier), min_depth)


def mobilenet_v1_spec(width_multiplier: float = 1.0, depthwise_separable: bool = True
                      ) -> NetworkSpec:
  """The resolved V1 table. `depthwise_separable=False` is the paper's "Conv MobileNet" (Table 4):
  every depthwise separable layer replaced by a standard 3x3 convolution."""
  check_positive("width_multiplier", width_multiplier)
  kind = LayerKind.SEPARABLE if depthwise_separable else LayerKind.CONV
  blocks = tuple(LayerSpec(kind, v1_width(row.out, width_multiplier), 3, row.stride, "relu6")
                 for row in V1_TABLE)
  stem = LayerSpec(LayerKind.CONV, v1_width(STEM_CHANNELS, width_multiplier), 3, 2, "relu6")
  # Keras and TF-slim keep 0.1% dropout (keep_prob 0.999) before the classifier.
  return NetworkSpec(stem, blocks, default_dropout=0.001)


class MobileNetV1(MobileNet):
  """MobileNetV1: 13 depthwise separable layers, ReLU6 as in TF-slim/Keras/timm (the paper says ReLU).

  Classifier: global average pool, dropout, Dense (Keras' 1x1 `conv_preds` on a 1x1 map).
  """
  width_multiplier: float = 1.0
  depthwise_separable: bool = True

  def table_spec(self) -> NetworkSpec:
    return mobilenet_v1_spec(self.width_multiplier, self.depthwise_separable)
