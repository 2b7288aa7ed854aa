"""Training and evaluation: `train_and_evaluate(config, workdir)` and its parts.

    from mobilenet_jax.train import base_config, train_and_evaluate
    config = base_config()            # or load a file of configs/
    config.num_train_steps = 100
    metrics = train_and_evaluate(config, "runs/notebook")

Imports optax, orbax and ml_collections (never imported by `import mobilenet_jax`).
"""

from mobilenet_jax.train.config import base_config, complete_config, validate_config
from mobilenet_jax.train.loop import train_and_evaluate
from mobilenet_jax.train.metrics import METRICS_FILE, TIMING_KEYS, read_metrics
from mobilenet_jax.train.state import TrainState, create_model

__all__ = ["METRICS_FILE", "TIMING_KEYS", "TrainState", "base_config", "complete_config",
           "create_model", "read_metrics", "train_and_evaluate", "validate_config"]
