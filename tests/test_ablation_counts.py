"""The expansion ablation changes exactly what t should change (MobileNetV2 paper, Table 2).

Each variant's parameters, multiply-adds and expanded widths are compared with torchvision's
MobileNetV2 built from the same (t, c, n, s) rows (`inverted_residual_setting`): an independent
implementation of the paper's table, whose multiply-adds are counted here from its modules' output
shapes with the papers' formula Dk*Dk*M*N*DF*DF (V1 paper section 3.1; dense layers M*N).
"""

import functools
import os
import sys

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "experiments"))
import expansion_ablation as ea  # noqa: E402

# MobileNetV2 paper, Table 2: (t, c, n, s); stem conv 3x3/2 to 32, last 1x1 conv to 1280, 1000 classes.
PAPER_TABLE = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1)]
RESOLUTION, CLASSES = 224, 1000


def torchvision_count(stage_ts):
  """(expanded widths, params, MAdds) of torchvision's MobileNetV2 1.0 at 224 with t per stage."""
  setting = [[t, c, n, s] for t, (_, c, n, s) in zip(stage_ts, PAPER_TABLE)]
  model = torchvision.models.MobileNetV2(num_classes=CLASSES, inverted_residual_setting=setting)
  madds = []

  def count(module, inputs, output):
    if isinstance(module, torch.nn.Conv2d):
      kh, kw = module.kernel_size
      per_output = kh * kw * module.in_channels // module.groups
      madds.append(output[0].numel() * per_output)   # output[0]: one image, C x H x W
    else:
      madds.append(module.in_features * module.out_features)

  for module in model.modules():
    if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
      module.register_forward_hook(count)
  with torch.no_grad():
    model.eval()(torch.zeros(1, 3, RESOLUTION, RESOLUTION))
  widths = [m.out_channels for m in model.modules()
            if isinstance(m, torch.nn.Conv2d) and m.groups > 1]   # the depthwise convs
  return widths, sum(p.numel() for p in model.parameters()), sum(madds)


@functools.lru_cache(maxsize=None)
def ours(ts):
  (variant,) = ea.expansion_variants([ts], 1.0, RESOLUTION)
  costs = ea.measure_costs(variant, CLASSES)
  return [int(w) for w in costs["expanded_widths"].split("-")], costs["params"], costs["madds"]


def test_the_reference_count_is_the_published_model():
  """t=6 is MobileNetV2: 3,504,872 params (Keras applications) and 300M MAdds (paper Table 3)."""
  widths, params, madds = torchvision_count([1, 6, 6, 6, 6, 6, 6])
  assert params == 3_504_872
  assert round(madds / 1e6) == 301 and int(madds / 1e6) == 300   # the paper truncates
  assert widths[:4] == [32, 96, 144, 144]   # 32 x 1, then 16 x 6, 24 x 6, 24 x 6


@pytest.mark.parametrize("ts", [1, 4, 6, (1, 6, 6, 6, 2, 2, 2)], ids=str)
def test_variant_costs_equal_torchvision(ts):
  stage_ts = [1] + [ts] * 6 if isinstance(ts, int) else list(ts)   # stage 1 keeps the paper's t=1
  assert ours(ts) == torchvision_count(stage_ts)


def test_t1_has_no_expansion_and_t4_widths():
  """Worked by hand from Table 2: with t=1 a block's depthwise width is its input width."""
  assert ours(1)[0][:4] == [32, 16, 24, 24]
  assert ours(4)[0][:4] == [32, 64, 96, 96]   # 16 x 4, 24 x 4, 24 x 4


def test_costs_grow_with_t():
  counts = [ours(t)[1:] for t in (1, 2, 3, 4, 6, 8)]
  assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(counts, counts[1:]))
