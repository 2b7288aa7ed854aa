"""Weights in: one way to read any weights this project knows, with their model and eval recipe.

    from mobilenet_jax import weights
    loaded = weights.load("pretrained/v3l")                       # checkpoint directory
    loaded = weights.load("mobilenet_v2_1.0_224_quant.tflite")    # released (or exported) .tflite
    loaded = weights.load("timm:mobilenetv3_large_100", weights_file="model.safetensors")
    logits = loaded.model.apply(loaded.variables, images, train=False)   # images: loaded.recipe

`python -m mobilenet_jax.evaluate`, `python -m mobilenet_jax.export` and training's `init_from`
read weights through here. Importing this package loads no TensorFlow, Keras or torch; each reader
imports what it needs when it runs.
"""

from mobilenet_jax.weights.checkpoint import Checkpoint, read_checkpoint
from mobilenet_jax.weights.load import Loaded, load

__all__ = ["Checkpoint", "Loaded", "load", "read_checkpoint"]
