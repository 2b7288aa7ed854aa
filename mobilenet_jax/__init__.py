"""mobilenet_jax: MobileNet V1, V2, V3-Large and V3-Small in JAX/Flax, exact to the papers.

    import mobilenet_jax as mj
    model = mj.create_model("mobilenet_v3_large", width_multiplier=0.75)
    variables = mj.init_variables(model, resolution=224, seed=0)  # == jax.jit(model.init)(key(0), ...)
    logits = jax.jit(model.apply)(variables, images)

This package namespace imports only jax and flax; training (`mobilenet_jax.train`), data
(`mobilenet_jax.data`), weights in (`mobilenet_jax.weights.load`; the readers in
`mobilenet_jax.convert`) and the XLA:CPU kernels (`mobilenet_jax.xla_cpu`, when `compute` chooses
them) are imported on demand.
"""

import os

# TensorFlow (the input pipeline, image reading, TFLite export) prints INFO lines at import: level
# 2 hides them (and warnings) and keeps errors. Its oneDNN notice (twice) ignores the
# level and goes only with oneDNN, which speeds up TF's matmuls and convolutions: this package
# runs none in TF. A value the user set wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from mobilenet_jax.models import (ConvNormAct, DepthwiseSeparable, InvertedResidual, LayerKind,  # noqa: E402
                                  LayerSpec, MobileNet, MobileNetV1, MobileNetV2, MobileNetV3,
                                  NetworkSpec, SqueezeExcite, create_model, fold_batch_norm,
                                  list_models, make_divisible, network_layers)
from mobilenet_jax.compilation_cache import enable_compilation_cache
from mobilenet_jax.inference import inference_function
from mobilenet_jax.models.initialization import init_variables
from mobilenet_jax.profile import count_madds, count_params, layer_costs

__version__ = "0.1.0"

