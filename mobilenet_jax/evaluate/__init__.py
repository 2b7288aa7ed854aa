"""Evaluate released weights on real images: `python -m mobilenet_jax.evaluate --help`.

    loaded = mobilenet_jax.weights.load(path)   # .tflite, a checkpoint dir, or a converter source
    paths, labels = list_images("photos/")
    logits = predict(loaded, paths)             # or runtime="litert" for a .tflite file
"""

from mobilenet_jax import extras

extras.require_when_run("mobilenet_jax.evaluate", "train")

from mobilenet_jax.evaluate.cli import main, predict, summarize, top_k  # noqa: E402
from mobilenet_jax.evaluate.images import list_images  # noqa: E402
