"""MobileNetV3-Large and -Small (Howard et al. 2019, arXiv:1905.02244) as its Tables 1 and 2."""

from __future__ import annotations

from typing import NamedTuple

from mobilenet_jax.models.builder import MobileNet
from mobilenet_jax.models.layers import make_divisible
from mobilenet_jax.models.spec import LayerKind, LayerSpec, NetworkSpec, check_positive


class V3Row(NamedTuple):
  """One bneck row: depthwise kernel, expanded ("exp size") and output channels, SE, NL, stride."""
  kernel: int
  expanded: int
  out: int
  se: bool
  activation: str
  stride: int


RE, HS = "relu", "hard_swish"
STEM_CHANNELS = 16
# Table 1 (V3-Large). Input 16 channels from the stem (3x3 conv, stride 2, hard-swish).
V3_LARGE: tuple[V3Row, ...] = (
    V3Row(3, 16, 16, False, RE, 1),
    V3Row(3, 64, 24, False, RE, 2),
    V3Row(3, 72, 24, False, RE, 1),
    V3Row(5, 72, 40, True, RE, 2),
    V3Row(5, 120, 40, True, RE, 1),
    V3Row(5, 120, 40, True, RE, 1),
    V3Row(3, 240, 80, False, HS, 2),
    V3Row(3, 200, 80, False, HS, 1),
    V3Row(3, 184, 80, False, HS, 1),
    V3Row(3, 184, 80, False, HS, 1),
    V3Row(3, 480, 112, True, HS, 1),
    V3Row(3, 672, 112, True, HS, 1),
    V3Row(5, 672, 160, True, HS, 2),
    V3Row(5, 960, 160, True, HS, 1),
    V3Row(5, 960, 160, True, HS, 1),
)
# Table 2 (V3-Small); the released checkpoints have a 1024-wide head (early paper drafts said 1280).
V3_SMALL: tuple[V3Row, ...] = (
    V3Row(3, 16, 16, True, RE, 2),
    V3Row(3, 72, 24, False, RE, 2),
    V3Row(3, 88, 24, False, RE, 1),
    V3Row(5, 96, 40, True, HS, 2),
    V3Row(5, 240, 40, True, HS, 1),
    V3Row(5, 240, 40, True, HS, 1),
    V3Row(5, 120, 48, True, HS, 1),
    V3Row(5, 144, 48, True, HS, 1),
    V3Row(5, 288, 96, True, HS, 2),
    V3Row(5, 576, 96, True, HS, 1),
    V3Row(5, 576, 96, True, HS, 1),
)
TABLES = {"large": V3_LARGE, "small": V3_SMALL}
HEAD_CHANNELS = {"large": 1280, "small": 1024}
LAST_CONV_RATIO = 6   # the last 1x1 conv is 6x the last block's output: 960 (Large), 576 (Small)
WIDTH_RULES = ("tf", "torchvision")


def mobilenet_v3_spec(variant: str = "large", width_multiplier: float = 1.0,
                      minimal: bool = False, width_rule: str = "tf",
                      head_features: int | None = None) -> NetworkSpec:
  """Resolved V3 widths.

  width_rule="tf" (TF-slim/Keras/timm, the released checkpoints): stem 16 never scaled, outputs
  make_divisible(c * alpha), expanded widths make_divisible(in * exp/in_table) from the *rounded*
  input, head 1280/1024 kept for alpha <= 1. width_rule="torchvision": stem, expanded widths and
  head all make_divisible(x * alpha) (torchvision's `_mobilenet_v3_conf`). The two agree at alpha = 1.
  SE reduces the expanded width to make_divisible(expanded / 4, 8) (section 5.3).
  minimal: the "minimalistic" form: every depthwise kernel 3x3, no SE, ReLU everywhere.
  head_features: width of the pooled hidden layer (default 1280/1024); 0 removes it.
  """
  if variant not in TABLES:
    raise ValueError(f"variant must be one of {sorted(TABLES)}, got {variant!r}")
  if width_rule not in WIDTH_RULES:
    raise ValueError(f"width_rule must be one of {WIDTH_RULES}, got {width_rule!r}")
  check_positive("width_multiplier", width_multiplier)
  alpha, tf_rule = width_multiplier, width_rule == "tf"
  scale = lambda c: make_divisible(c * alpha)  # noqa: E731
  stem_features = STEM_CHANNELS if tf_rule else scale(STEM_CHANNELS)
  stem = LayerSpec(LayerKind.CONV, stem_features, 3, 2, RE if minimal else HS)
  blocks, in_table, in_actual = [], STEM_CHANNELS, stem_features
  for row in TABLES[variant]:
    out = scale(row.out)
    expanded = make_divisible(in_actual * row.expanded / in_table) if tf_rule else scale(row.expanded)
    if tf_rule:
      se = make_divisible(expanded / 4) if row.se else None
    else:
      se = make_divisible(expanded // 4) if row.se else None
    blocks.append(LayerSpec(LayerKind.INVERTED_RESIDUAL, out, 3 if minimal else row.kernel,
                            row.stride, RE if minimal else row.activation,
                            expanded_features=expanded, se_features=None if minimal else se))
    in_table, in_actual = row.out, out
  last_conv = LayerSpec(LayerKind.CONV, make_divisible(in_actual * LAST_CONV_RATIO) if tf_rule
                        else in_actual * LAST_CONV_RATIO, 1, 1, RE if minimal else HS)
  if head_features is None:
    head = HEAD_CHANNELS[variant]
    head_features = head if (tf_rule and alpha <= 1) else make_divisible(head * alpha)
  return NetworkSpec(stem, tuple(blocks), last_conv, head_features, RE if minimal else HS,
                     default_dropout=0.2)


class MobileNetV3(MobileNet):
  """MobileNetV3-Large or -Small (`variant`), optionally minimalistic.

  Head (section 5.2, Figure 5): last 1x1 conv + BN + act, global pool, 1x1 conv with bias and no
  norm (here a Dense layer on the pooled vector) + act, dropout 0.2, classifier.
  """
  variant: str = "large"
  width_multiplier: float = 1.0
  minimal: bool = False
  width_rule: str = "tf"
  head_features: int | None = None

  def table_spec(self) -> NetworkSpec:
    return mobilenet_v3_spec(self.variant, self.width_multiplier, self.minimal, self.width_rule,
                             self.head_features)
