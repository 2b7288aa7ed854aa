"""One generic builder: a resolved architecture table (`NetworkSpec`) in, a Flax network out.

Each MobileNet file (`mobilenet_v1.py`, `mobilenet_v2.py`, `mobilenet_v3.py`) writes its paper's table
as data and turns it into a `NetworkSpec` with concrete channel counts for a width multiplier;
`MobileNet.__call__` below is the only place that turns specs into modules.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Union

import jax.numpy as jnp
from flax import linen as nn

from mobilenet_jax.models import kernels as kernels_lib
from mobilenet_jax.models.blocks import DepthwiseSeparable, InvertedResidual
from mobilenet_jax.models.layers import (ACTIVATIONS, PADDING_MODES, Activation, Array, ModuleDef,
                                         bind_norm, classifier_kernel_init, global_average_pool)

MIN_RESOLUTION = 32
FEATURE_STRIDES = (4, 8, 16, 32)


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """One layer of a network with concrete widths.

  kind: "conv" (standard kxk conv + BN + act: the stem, or a V1 layer in full-convolution form),
        "separable" (V1 depthwise separable block), "inverted_residual" (V2/V3 block).
  """
  kind: str
  features: int
  kernel_size: int = 3
  stride: int = 1
  activation: str = "relu6"
  expanded_features: Optional[int] = None
  se_features: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
  """A whole network: stem, blocks, optional last 1x1 conv, optional hidden head layer.

  head_features > 0 adds V3's pooled 1x1 conv with bias and no norm (V3 paper section 5.2, Figure 5);
  it is a Dense layer on the pooled vector.
  """
  stem: LayerSpec
  blocks: tuple[LayerSpec, ...]
  last_conv: Optional[LayerSpec] = None
  head_features: int = 0
  head_activation: str = "hard_swish"
  default_dropout: float = 0.2

  @property
  def layers(self) -> tuple[LayerSpec, ...]:
    return (self.stem, *self.blocks, *((self.last_conv,) if self.last_conv else ()))


def with_small_input(spec: NetworkSpec, layers: int) -> NetworkSpec:
  """`spec` with its first `layers` stride-2 layers (the stem first) at stride 1: how CIFAR papers
  adapt ImageNet networks to 32x32 images (e.g. MobileNetV2 on CIFAR-10 with the stem and the
  first stride-2 stage at stride 1), keeping every weight shape."""
  strided = [i for i, layer in enumerate(spec.layers) if layer.stride > 1][:layers]
  layers_ = [dataclasses.replace(layer, stride=1) if i in strided else layer
             for i, layer in enumerate(spec.layers)]
  blocks = tuple(layers_[1:1 + len(spec.blocks)])
  return dataclasses.replace(spec, stem=layers_[0], blocks=blocks,
                             last_conv=layers_[-1] if spec.last_conv else None)


def check_positive(name: str, value: float) -> None:
  if not value > 0:
    raise ValueError(f"{name} must be > 0, got {value!r}; the papers use values such as 1.0, 0.75, "
                     "0.5 or 0.35")


class MobileNet(nn.Module):
  """Base class of every MobileNet: the options common to all of them and the generic builder.

  Subclasses define `table_spec()`, their paper's table resolved for the width multiplier. Call with
  `(images, train=False)` on NHWC images of any size from 32x32 up (global pooling: the resolution
  multiplier rho is just the input size; 16x16 with `small_input=1`, 8x8 with 2).

  Returns logits `[N, num_classes]`; pooled features `[N, C]` when `num_classes=0`; and with
  `features=True` a dict `{4: ..., 8: ..., 16: ..., 32: ...}` of the feature maps at those strides
  (the output of the last layer at each stride, as timm's `features_only`), for detection and
  segmentation heads.
  """
  num_classes: int = 1000
  dropout_rate: Optional[float] = None   # None: the network's usual rate (NetworkSpec.default_dropout)
  drop_path_rate: float = 0.0            # stochastic depth, linear in the block index (timm rule)
  dtype: Optional[jnp.dtype] = None      # compute dtype, e.g. jnp.bfloat16
  param_dtype: jnp.dtype = jnp.float32
  bn_momentum: float = 0.99              # Flax convention: decay of the running average (TF 0.99)
  bn_epsilon: float = 1e-3               # TF/Keras; torchvision V2 and timm non-tf weights use 1e-5
  padding: str = "same"                  # "same" (TF/Keras), "symmetric" (PyTorch), "keras" (Keras V1)
  norm_layer: Optional[ModuleDef] = None  # replaces BatchNorm: a factory such as partial(nn.GroupNorm, 8)
  activation: Optional[Activation] = None  # replaces every activation of the table when set
  kernels: str = "auto"                  # how layers are computed: models/kernels.py
  small_input: int = 0                   # 32x32 datasets: the first N stride-2 layers at stride 1

  def table_spec(self) -> NetworkSpec:
    raise NotImplementedError

  def network_spec(self) -> NetworkSpec:
    """The network as built: the table, with `small_input` applied."""
    return with_small_input(self.table_spec(), self.small_input)

  @property
  def min_resolution(self) -> int:
    return MIN_RESOLUTION // 2 ** self.small_input

  @property
  def feature_strides(self) -> tuple[int, ...]:
    """The strides of the maps `features=True` returns (4, 8, 16, 32, halved per `small_input`)."""
    return tuple(s // 2 ** self.small_input for s in FEATURE_STRIDES)

  def validate(self) -> None:
    """Raises ValueError on options no network can be built from (called before any tracing)."""
    if self.num_classes < 0:
      raise ValueError(f"num_classes must be >= 0 (0 = headless), got {self.num_classes}")
    if self.padding not in PADDING_MODES:
      raise ValueError(f"padding must be one of {PADDING_MODES}, got {self.padding!r}")
    kernels_lib.resolve_kernels(self.kernels)
    rate = self.dropout_rate
    if rate is not None and not 0 <= rate < 1:
      raise ValueError(f"dropout_rate must be in [0, 1), got {rate}")
    if not (isinstance(self.small_input, int) and 0 <= self.small_input <= 2):
      raise ValueError(f"small_input must be 0, 1 (stem at stride 1) or 2 (also the first stride-2 "
                       f"block), got {self.small_input!r}")
    if not 0 <= self.drop_path_rate < 1:
      raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
    self.network_spec()

  def _act(self, name: str) -> Activation:
    return self.activation or ACTIVATIONS[name]

  @nn.compact
  def __call__(self, x: Array, train: bool = False, features: bool = False
               ) -> Union[Array, dict[int, Array]]:
    if x.ndim != 4:
      raise ValueError(f"expected NHWC images [batch, height, width, channels], got shape {x.shape}")
    if min(x.shape[1], x.shape[2]) < self.min_resolution:
      size = self.min_resolution
      raise ValueError(f"images must be at least {size}x{size} (five stride-2 layers, "
                       f"small_input={self.small_input}), got {x.shape[1]}x{x.shape[2]}; resize "
                       "or pad them first")
    self.validate()
    spec = self.network_spec()
    norm = self.norm_layer or functools.partial(
        nn.BatchNorm, momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype,
        param_dtype=self.param_dtype)
    norm = bind_norm(norm, train)
    conv_norm_act = kernels_lib.conv_norm_act(self.kernels)
    common = dict(norm=norm, padding=self.padding, dtype=self.dtype, param_dtype=self.param_dtype)
    unit = functools.partial(conv_norm_act, **common)
    blocks = dict(conv_norm_act=conv_norm_act, **common)

    if self.dtype is not None:
      x = x.astype(self.dtype)
    x = unit(spec.stem.features, spec.stem.kernel_size, spec.stem.stride,
             activation=self._act(spec.stem.activation), name="stem")(x)
    stride = spec.stem.stride
    feature_maps = {stride: x}
    num_blocks = len(spec.blocks)
    for i, layer in enumerate(spec.blocks):
      name = f"blocks_{i}"
      if layer.kind == "conv":
        x = unit(layer.features, layer.kernel_size, layer.stride,
                 activation=self._act(layer.activation), name=name)(x)
      elif layer.kind == "separable":
        x = DepthwiseSeparable(layer.features, layer.kernel_size, layer.stride,
                               activation=self._act(layer.activation), name=name,
                               **blocks)(x, train)
      elif layer.kind == "inverted_residual":
        x = InvertedResidual(
            layer.features, expanded_features=layer.expanded_features,
            kernel_size=layer.kernel_size, strides=layer.stride,
            use_se=layer.se_features is not None, se_features=layer.se_features,
            activation=self._act(layer.activation),
            drop_path_rate=self.drop_path_rate * i / num_blocks, name=name, **blocks)(x, train)
      else:
        raise ValueError(f"unknown layer kind {layer.kind!r}")
      stride *= layer.stride
      feature_maps[stride] = x
    if spec.last_conv is not None:
      last = spec.last_conv
      x = unit(last.features, last.kernel_size, last.stride,
               activation=self._act(last.activation), name="last_conv")(x)
      feature_maps[stride] = x
    if features:
      return {s: feature_maps[s] for s in self.feature_strides}

    x = global_average_pool(x)
    if spec.head_features:
      x = nn.Dense(spec.head_features, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="head")(x)
      x = self._act(spec.head_activation)(x)
    if self.num_classes == 0:
      return x
    rate = spec.default_dropout if self.dropout_rate is None else self.dropout_rate
    x = nn.Dropout(rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=classifier_kernel_init, name="classifier")(x)

  def feature_channels(self) -> dict[int, int]:
    """Channel count of each map returned by `features=True`, without running the network."""
    spec = self.network_spec()
    channels, stride = {spec.stem.stride: spec.stem.features}, spec.stem.stride
    for layer in spec.blocks:
      stride *= layer.stride
      channels[stride] = layer.features
    if spec.last_conv is not None:
      channels[stride] = spec.last_conv.features
    return {s: channels[s] for s in self.feature_strides}
