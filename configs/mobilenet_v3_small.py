"""MobileNetV3-Small on ImageNet, the paper's recipe (V3 paper section 6.1.1).

    python -m mobilenet_jax.main --config=configs/mobilenet_v3_small.py:width=1.0,resolution=224 \
        --workdir=runs/v3s
    python -m mobilenet_jax.main --config=configs/mobilenet_v3_small.py:minimal --workdir=runs/v3s_min

Hardware: as configs/mobilenet_v3_large.py (TPU v3-32, batch 4096, BN groups of 128).
Expected top-1 (V3 paper Table 3): 1.0 @224: 67.4%, 0.75 @224: 65.4%, minimal: 61.9%.
Not reproduced by this project (no ImageNet here). Recipe: see configs/mobilenet_v3_large.py.
"""

from __future__ import annotations

import ml_collections

from mobilenet_jax.configs import mobilenet_v3_large


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return mobilenet_v3_large.v3_paper_config("small", arg)
