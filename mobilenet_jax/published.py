"""Published parameter counts and multiply-adds of the MobileNets, with their sources.

Reference data only (no code): `experiments/paper_tables.py` prints it beside our counts and the tests
check our counts against it. MAdds are in millions for one image; params are exact trainable counts
(convolutions, dense layers with biases, BatchNorm gamma/beta; 1000 classes) of Keras applications,
which load the released TF checkpoints (keras.applications' MobileNet, MobileNetV2 and MobileNetV3).

How the sources print MAdds matters when comparing small models: the V1 paper and the TF-slim V1
table round to whole millions; the TF-slim V2 table truncates (e.g. 18.89M is printed as 18).
"""

from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Published:
  """One network of a paper table."""
  model: str                   # a `create_model` name
  width: float                 # width multiplier alpha
  resolution: int              # input size (resolution multiplier rho = resolution / 224)
  madds: Optional[float]       # published multiply-adds, millions
  madds_source: str
  params: Optional[int] = None  # exact reference count (Keras applications, trainable)
  printed: str = "round"       # how the source printed `madds`: "round" or "floor" to whole millions
  discrepancy: str = ""        # why the published figure disagrees with the released architecture
  note: str = ""               # other sources that print something else

  def consistent(self, madds_millions: float, tolerance: float = 0.01) -> bool:
    """Within `tolerance` of the published figure, or equal to it at the precision it was printed."""
    if abs(madds_millions - self.madds) <= tolerance * self.madds:
      return True
    if self.madds == int(self.madds):
      if self.printed == "floor":
        return int(madds_millions) == int(self.madds)
      return round(madds_millions) == int(self.madds)
    return False


V1_PAPER = "V1 paper Tables 6-7"
V1_SLIM = "TF-slim mobilenet_v1.md"
V2_SLIM = "TF-slim mobilenet/README.md"
V3_PAPER = "V3 paper Table 3 / TF-slim README"
V1_SLIM_075 = ("the TF-slim table's 0.75 row is ~2.6% below the paper's formula at every resolution "
               "(317M at 224 where the V1 paper prints 325M, which our count matches)")

V1_PARAMS = {1.0: 4_231_976, 0.75: 2_585_560, 0.5: 1_331_592, 0.25: 470_072}
V2_PARAMS = {1.4: 6_108_776, 1.3: 5_386_792, 1.0: 3_504_872, 0.75: 2_636_424, 0.5: 1_968_680,
             0.35: 1_677_128}

_V1_MADDS = {  # (alpha, resolution): (MAdds, source, discrepancy)
    (1.0, 224): (569, V1_PAPER, ""), (1.0, 192): (418, V1_PAPER, ""),
    (1.0, 160): (290, V1_PAPER, ""), (1.0, 128): (186, V1_PAPER, ""),
    (0.75, 224): (325, V1_PAPER, ""), (0.75, 192): (233, V1_SLIM, V1_SLIM_075),
    (0.75, 160): (162, V1_SLIM, V1_SLIM_075), (0.75, 128): (104, V1_SLIM, V1_SLIM_075),
    (0.5, 224): (149, V1_PAPER, ""), (0.5, 192): (110, V1_SLIM, ""),
    (0.5, 160): (77, V1_SLIM, ""), (0.5, 128): (49, V1_SLIM, ""),
    (0.25, 224): (41, V1_PAPER, ""),
    (0.25, 192): (34, V1_SLIM, "TF-slim prints 34M, out of line with its own 41/21/14M neighbours; "
                  "MAdds scale with resolution squared: 41.0 x (192/224)^2 = 30.1M"),
    (0.25, 160): (21, V1_SLIM, ""), (0.25, 128): (14, V1_SLIM, ""),
}

_V2_MADDS = {  # TF-slim table (truncated to whole millions)
    1.4: (582, None, None, None, None), 1.3: (509, None, None, None, None),
    1.0: (300, 221, 154, 99, 56), 0.75: (209, 153, 107, 69, 39), 0.5: (97, 71, 50, 32, 18),
    0.35: (59, 43, 30, 20, 11),
}
V2_RESOLUTIONS = (224, 192, 160, 128, 96)

V1_TABLE: tuple[Published, ...] = tuple(
    Published("mobilenet_v1", alpha, res, madds, source, V1_PARAMS[alpha], "round", why)
    for (alpha, res), (madds, source, why) in _V1_MADDS.items())

V2_TABLE: tuple[Published, ...] = tuple(
    Published("mobilenet_v2", alpha, res, madds, V2_SLIM if madds else "not published",
              V2_PARAMS[alpha], "floor")
    for alpha, row in _V2_MADDS.items()
    for res, madds in zip(V2_RESOLUTIONS, row))

V3_TABLE: tuple[Published, ...] = (
    Published("mobilenet_v3_large", 1.0, 224, 217, V3_PAPER, 5_483_032),
    Published("mobilenet_v3_large", 0.75, 224, 155, V3_PAPER, 3_993_528),
    Published("mobilenet_v3_large_minimal", 1.0, 224, 209, "TF-slim README", 3_924_288),
    Published("mobilenet_v3_small", 1.0, 224, 56, "V3 paper Table 3", 2_542_856,
              note="the TF-slim README and Keras docstring print 66M (and 2.9M params), figures "
                          "of an earlier paper revision; the released checkpoint has 2.54M params"),
    Published("mobilenet_v3_small", 0.75, 224, 44, V3_PAPER, 2_041_872,
              discrepancy="1.4% above the released architecture (whose 2,041,872 params match Keras "
                          "and timm exactly); neither the torchvision width rule (39.1M) nor a 1280 "
                          "head (43.8M) gives 44M"),
    Published("mobilenet_v3_small_minimal", 1.0, 224, 65, "TF-slim README", 2_044_736,
              discrepancy="TF-slim prints 65M, out of line with Small's 56M although minimal only "
                          "drops SE and uses 3x3 kernels; XLA's independent count agrees with ours"),
)

# V1 paper Table 4: the same network with standard 3x3 convolutions instead of depthwise separable.
V1_FULL_CONVOLUTION = {"madds": 4866, "params_millions": 29.3}
V1_SEPARABLE = {"madds": 569, "params_millions": 4.2}

# V1 paper Table 2: share of multiply-adds and parameters per layer type (%).
# The paper prints 1.19% of MAdds for the first (standard 3x3) convolution; the other three shares
# sum to 98.10%, which leaves 1.90% (rounding), and our count gives 1.91%: the printed figure has its
# digits swapped.
V1_LAYER_TYPES = {
    "conv_1x1": {"madds_pct": 94.86, "params_pct": 74.59},
    "depthwise": {"madds_pct": 3.06, "params_pct": 1.06},
    "conv_kxk": {"madds_pct": 1.19, "params_pct": 0.02},
    "fc": {"madds_pct": 0.18, "params_pct": 24.33},
}

ALL_TABLES = V1_TABLE + V2_TABLE + V3_TABLE
