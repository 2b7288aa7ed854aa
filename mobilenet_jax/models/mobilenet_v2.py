"""MobileNetV2 (Sandler et al. 2018, arXiv:1801.04381) as its Table 2."""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

from mobilenet_jax.models.builder import MobileNet
from mobilenet_jax.models.layers import make_divisible
from mobilenet_jax.models.spec import LayerKind, LayerSpec, NetworkSpec, check_positive


class V2Row(NamedTuple):
  """One stage of Table 2: expansion factor t, output channels c, repeats n, first stride s."""
  t: float
  c: int
  n: int
  s: int


STEM_CHANNELS = 32
LAST_CHANNELS = 1280
V2_TABLE: tuple[V2Row, ...] = (
    V2Row(1, 16, 1, 1),
    V2Row(6, 24, 2, 2),
    V2Row(6, 32, 3, 2),
    V2Row(6, 64, 4, 2),
    V2Row(6, 96, 3, 1),
    V2Row(6, 160, 3, 2),
    V2Row(6, 320, 1, 1),
)
PAPER_EXPANSION = 6

Expansion = Optional[Union[float, Sequence[float]]]


def stage_expansions(expansion: Expansion) -> tuple[float, ...]:
  """Expansion factor t of each of the 7 stages.

  None: the paper's (1, 6, 6, 6, 6, 6, 6). One number: replaces every t=6 (the first stage's t=1
  block has no expansion layer in the paper and stays). A sequence: one t per stage.
  """
  if expansion is None:
    ts = tuple(float(row.t) for row in V2_TABLE)
  elif isinstance(expansion, (int, float)):
    ts = tuple(float(expansion) if row.t == PAPER_EXPANSION else float(row.t) for row in V2_TABLE)
  else:
    ts = tuple(float(t) for t in expansion)
    if len(ts) != len(V2_TABLE):
      raise ValueError(f"expansion needs one value per stage ({len(V2_TABLE)} per-stage values), "
                       f"got {len(ts)}: "
                       f"{tuple(expansion)}")
  for t in ts:
    if not t >= 1:
      raise ValueError(f"expansion must be >= 1 (every t must be >= 1: t < 1 would shrink, not "
                       f"expand), got {t}")
  return ts


def mobilenet_v2_spec(width_multiplier: float = 1.0, expansion: Expansion = None) -> NetworkSpec:
  """Resolved V2 widths; identical in torchvision, Keras and TF-slim for every released alpha.

  Stem and block outputs: make_divisible(c * alpha, 8); expanded width: make_divisible(in * t, 8)
  from the rounded input; the last 1x1 conv keeps 1280 for alpha <= 1 (Keras `MobileNetV2`'s
  `last_block_filters`, torchvision's `last_channel * max(1.0, width_mult)`).
  """
  check_positive("width_multiplier", width_multiplier)
  ts = stage_expansions(expansion)
  stem = LayerSpec(LayerKind.CONV, make_divisible(STEM_CHANNELS * width_multiplier), 3, 2,
                   "relu6")
  blocks, in_channels = [], stem.features
  for row, t in zip(V2_TABLE, ts):
    out = make_divisible(row.c * width_multiplier)
    for i in range(row.n):
      blocks.append(LayerSpec(LayerKind.INVERTED_RESIDUAL, out, 3, row.s if i == 0 else 1,
                              "relu6", expanded_features=make_divisible(in_channels * t)))
      in_channels = out
  last = LAST_CHANNELS if width_multiplier <= 1 else make_divisible(LAST_CHANNELS * width_multiplier)
  return NetworkSpec(stem, tuple(blocks), LayerSpec(LayerKind.CONV, last, 1, 1, "relu6"),
                     default_dropout=0.2)


class MobileNetV2(MobileNet):
  """MobileNetV2: inverted residuals with linear bottlenecks, ReLU6, 1280-wide last conv.

  `expansion` ablates t without code changes: one number for every t=6 stage, or 7 per-stage values.
  Classifier: pool, dropout 0.2 (torchvision; Keras has none), Dense.
  """
  width_multiplier: float = 1.0
  expansion: Expansion = None

  def table_spec(self) -> NetworkSpec:
    return mobilenet_v2_spec(self.width_multiplier, self.expansion)
