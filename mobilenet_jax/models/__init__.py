"""MobileNet V1/V2/V3 as Flax Linen modules. Imports only jax and flax, and no backend's kernels."""

from mobilenet_jax.models.blocks import DepthwiseSeparable, InvertedResidual
from mobilenet_jax.models.builder import MobileNet
from mobilenet_jax.models.fold import fold_batch_norm
from mobilenet_jax.models.layers import ConvNormAct, SqueezeExcite, make_divisible
from mobilenet_jax.models.mobilenet_v1 import MobileNetV1, mobilenet_v1_spec
from mobilenet_jax.models.mobilenet_v2 import MobileNetV2, mobilenet_v2_spec
from mobilenet_jax.models.mobilenet_v3 import MobileNetV3, mobilenet_v3_spec
from mobilenet_jax.models.registry import create_model, list_models
from mobilenet_jax.models.spec import (LayerKind, LayerSpec, NetworkLayer, NetworkSpec,
                                       network_layers)
