"""Pretrained MobileNets from Keras applications, torchvision, timm and TFLite files.

    model, variables = from_keras(keras.applications.MobileNetV3Large(...))
    model, variables = from_torch(state_dict, "tf_mobilenetv3_large_075")
    model, variables = from_tflite("mobilenet_v2_1.0_224_quant.tflite")
    logits = model.apply(variables, images, train=False)

`python -m mobilenet_jax.convert --source=... --weights=... --out=DIR` turns a downloaded weight
file into a checkpoint that `mobilenet_jax.pretrained.load_pretrained` (and training's `init_from`)
reads. Keras and torch are only needed to read their own files; nothing here imports them at import.
Float sources give numerically identical logits; quantized TFLite files run here in float with
their dequantized weights, and `eight_bit_apply` adds back the file's 8-bit activations.
"""

from mobilenet_jax import extras

extras.require_when_run("mobilenet_jax.convert", "train")

from mobilenet_jax.convert.assemble import Conversion, ConversionError  # noqa: E402
from mobilenet_jax.convert.keras_source import convert_keras, from_keras  # noqa: E402
from mobilenet_jax.convert.torch_source import (  # noqa: E402
    TORCHVISION_ARCHS, convert_torch, from_torch, supported_archs)
from mobilenet_jax.convert.tflite_eight_bit import eight_bit_apply  # noqa: E402
from mobilenet_jax.convert.tflite_source import convert_tflite, from_tflite  # noqa: E402
