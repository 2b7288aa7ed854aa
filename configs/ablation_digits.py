"""The default job's recipe (MobileNetV2 x0.5 on the embedded digits), shortened for ablation sweeps.

    python experiments/expansion_ablation.py          # uses this file; both studies, 3 seeds each
    python -m mobilenet_jax.main --config=configs/ablation_digits.py --workdir=runs/base   # one run

8 epochs instead of the default job's 20, so that the full default sweep (8 expansion variants and
5 MobileNetV1 width/resolution variants, 3 seeds each) fits a short session on a 2-core CPU.
Each variant overrides only the model and the resolution. Hardware: any CPU.
Expected: 94-99% eval top-1 on the held-out digits depending on the variant (see
experiments/results/).
"""

from __future__ import annotations

import ml_collections

from mobilenet_jax.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.num_epochs = 8.0
  config.log_every_steps = 44
  return config
