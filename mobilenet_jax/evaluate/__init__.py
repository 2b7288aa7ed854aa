"""Evaluate released weights on real images: `python -m mobilenet_jax.evaluate --help`.

    weights = load_weights(args)            # .tflite, any converter source, or a checkpoint dir
    paths, labels = list_images("photos/")
    logits = predict(weights, paths)        # or runtime="litert" for a .tflite file
"""

from mobilenet_jax import extras

extras.require_when_run("mobilenet_jax.evaluate", "train")

from mobilenet_jax.evaluate.cli import main, predict, summarize, top_k  # noqa: E402
from mobilenet_jax.evaluate.images import list_images  # noqa: E402
from mobilenet_jax.evaluate.weights import Weights, load_weights  # noqa: E402
