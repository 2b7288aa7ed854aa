"""mobilenet_jax: MobileNet V1, V2, V3-Large and V3-Small in JAX/Flax, exact to the papers.

    import mobilenet_jax as mj
    model = mj.create_model("mobilenet_v3_large", width_multiplier=0.75)
    variables = model.init(jax.random.key(0), images, train=False)
    logits = model.apply(variables, images, train=False)

This package namespace imports only jax and flax; training (`mobilenet_jax.train`), data
(`mobilenet_jax.data`) and weight import (`mobilenet_jax.convert`) are imported on demand.
"""

from mobilenet_jax.models import (ConvNormAct, DepthwiseConv, DepthwiseSeparable, InvertedResidual,
                                  LayerSpec, MobileNet, MobileNetV1, MobileNetV2, MobileNetV3,
                                  NetworkSpec, SqueezeExcite, create_model, depthwise_conv,
                                  list_models, make_divisible)
from mobilenet_jax.profile import count_madds, count_params, layer_costs

__version__ = "0.1.0"
