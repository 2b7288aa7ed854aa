"""The expansion ablation changes exactly what t should change (MobileNetV2 paper, Table 2).

The expected widths, parameters and multiply-adds are computed here by hand from the paper's table,
independently of the model code: at width 1.0 every channel count is a multiple of 8 and in * t is
an integer, so no rounding rule is involved.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "experiments"))
import expansion_ablation as ea  # noqa: E402

# MobileNetV2 paper, Table 2: (t, c, n, s); stem conv 3x3/2 to 32, last 1x1 conv to 1280, 1000 classes.
PAPER_TABLE = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1)]
RESOLUTION, CLASSES = 224, 1000


def hand_count(stage_ts):
  """(expanded widths, params, MAdds) of MobileNetV2 1.0 at 224 with t per stage.

  Every conv has no bias and a BatchNorm (scale + bias = 2 params per channel). MAdds: k*k*in*out
  per output pixel for convs (depthwise: k*k per channel), in*out for the classifier.
  """
  size = RESOLUTION // 2                              # after the stride-2 stem
  params = 3 * 3 * 3 * 32 + 2 * 32
  madds = size * size * 3 * 3 * 3 * 32
  widths, cin = [], 32
  for (_, c, n, s), t in zip(PAPER_TABLE, stage_ts):
    for i in range(n):
      stride = s if i == 0 else 1
      exp = cin * t
      widths.append(exp)
      out_size = size // stride
      if exp != cin:                                  # 1x1 expansion, at the input resolution
        params += cin * exp + 2 * exp
        madds += size * size * cin * exp
      params += 9 * exp + 2 * exp                     # 3x3 depthwise
      madds += out_size * out_size * 9 * exp
      params += exp * c + 2 * c                       # linear 1x1 projection
      madds += out_size * out_size * exp * c
      cin, size = c, out_size
  params += cin * 1280 + 2 * 1280                     # last 1x1 conv, at 7x7
  madds += size * size * cin * 1280
  params += 1280 * CLASSES + CLASSES                  # classifier (with bias)
  madds += 1280 * CLASSES
  return widths, params, madds


def test_hand_count_reproduces_the_published_model():
  """The arithmetic above is right: t=6 gives MobileNetV2's 3,504,872 params (Keras/torchvision)
  and ~300M MAdds (paper Table 3)."""
  _, params, madds = hand_count([1, 6, 6, 6, 6, 6, 6])
  assert params == 3_504_872
  assert 295e6 < madds < 305e6


@pytest.mark.parametrize("t", [1, 4, 6])
def test_uniform_t_against_hand_count(t):
  stage_ts = [1] + [t] * 6                            # the first stage keeps the paper's t=1
  widths, params, madds = hand_count(stage_ts)
  (variant,) = ea.expansion_variants([t], 1.0, RESOLUTION)
  costs = ea.measure_costs(variant, CLASSES)
  assert costs["expanded_widths"] == "-".join(map(str, widths))
  assert costs["params"] == params
  assert costs["madds"] == madds


def test_t1_has_no_expansion_layers_and_t4_widths():
  widths_t1, _, _ = hand_count([1] * 7)
  assert widths_t1[:4] == [32, 16, 24, 24]            # t=1: the block's input width
  widths_t4, _, _ = hand_count([1] + [4] * 6)
  assert widths_t4[:4] == [32, 64, 96, 96]


def test_per_stage_pattern_against_hand_count():
  pattern = (1, 6, 6, 6, 2, 2, 2)
  widths, params, madds = hand_count(pattern)
  (variant,) = ea.expansion_variants([pattern], 1.0, RESOLUTION)
  assert variant.label == "t=1-6-6-6-2-2-2"
  costs = ea.measure_costs(variant, CLASSES)
  assert costs["expanded_widths"] == "-".join(map(str, widths))
  assert (costs["params"], costs["madds"]) == (params, madds)


def test_costs_grow_with_t():
  counts = [hand_count([1] + [t] * 6)[1:] for t in (1, 2, 3, 4, 6, 8)]
  assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(counts, counts[1:]))
