"""Input pipelines: tensorflow-datasets + tf.data for digits (embedded), ImageNet, any TFDS image
dataset, and image folders.

    from mobilenet_jax import data
    config.dataset = data.default_dataset_config()        # digits: no download
    info = data.dataset_info(config)                       # errors here, before compiling
    train = data.create_train_iterator(config, local_batch_size=128, seed=0, start_step=step)
    for batch in data.create_eval_iterator(config, local_batch_size=128): ...

Importing this package is light (no TensorFlow); TensorFlow loads on the first pipeline call.
"""

from mobilenet_jax.data.config import default_dataset_config
from mobilenet_jax.data.info import DatasetInfo

_PIPELINE = ("dataset_info", "create_train_iterator", "create_eval_iterator", "describe")


def __getattr__(name):  # PEP 562: import TensorFlow only when a pipeline function is used.
  if name in _PIPELINE:
    from mobilenet_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    return getattr(pipeline, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DatasetInfo", "default_dataset_config", *_PIPELINE]
