"""One generic builder: a resolved architecture table (`NetworkSpec`, `spec.py`) in, a Flax network out.

`MobileNet.layer` is the only place that turns a layer of the table into a module; `__call__` walks
the table (`spec.network_layers`) and applies them. How each conv + norm + activation unit is
computed is the `conv_norm_act` factory the network is given (plain `ConvNormAct` by default; the
XLA:CPU kernels of `mobilenet_jax.xla_cpu` when `create_model` chooses them): the module itself
never looks at the backend, so one configuration traces one program everywhere.
"""

from __future__ import annotations

import functools
from typing import Optional, Union

import jax.numpy as jnp
from flax import linen as nn

from mobilenet_jax.models.blocks import DepthwiseSeparable, InvertedResidual
from mobilenet_jax.models.layers import (ACTIVATIONS, PADDING_MODES, Activation, Array, ConvNormAct,
                                         ModuleDef, bind_norm, classifier_kernel_init,
                                         global_average_pool)
from mobilenet_jax.models.spec import (LayerKind, NetworkLayer, NetworkSpec, network_layers,
                                       with_small_input)

MIN_RESOLUTION = 32
FEATURE_STRIDES = (4, 8, 16, 32)


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
  conv_norm_act: ModuleDef = ConvNormAct  # factory of every conv unit (how it is computed)
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
    if not callable(self.conv_norm_act):
      raise ValueError(f"conv_norm_act must be a ConvNormAct factory, got {self.conv_norm_act!r}")
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

  def head_activation(self) -> Activation:
    """The activation of the pooled hidden layer (V3's head)."""
    return self._act(self.network_spec().head_activation)

  def norm(self, train: bool) -> ModuleDef:
    """The norm factory of every unit: `norm_layer`, or BatchNorm with the network's settings."""
    norm = self.norm_layer or functools.partial(
        nn.BatchNorm, momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype,
        param_dtype=self.param_dtype)
    return bind_norm(norm, train)

  @nn.nowrap
  def layer(self, layer: NetworkLayer, norm: ModuleDef, num_blocks: int) -> nn.Module:
    """The module of one layer of the walk, named as in the variables: a `conv_norm_act` unit, a
    `DepthwiseSeparable` or an `InvertedResidual` block. Its fields are the network's choices
    (activations, padding, squeeze-excite gate, ...), which the XLA:CPU inference program reads
    from here too. Stochastic depth grows linearly with the block index (timm's rule).
    Not wrapped by Flax (`nn.nowrap`, which an override keeps): inside `__call__` the module is a
    child of the network, and called on an unbound network it is a module definition of its own."""
    spec = layer.spec
    common = dict(norm=norm, padding=self.padding, dtype=self.dtype, param_dtype=self.param_dtype,
                  activation=self._act(spec.activation), name=layer.name)
    if spec.kind == LayerKind.CONV:
      return self.conv_norm_act(spec.features, spec.kernel_size, spec.stride, **common)
    if spec.kind == LayerKind.SEPARABLE:
      return DepthwiseSeparable(spec.features, spec.kernel_size, spec.stride,
                                conv_norm_act=self.conv_norm_act, **common)
    return InvertedResidual(
        spec.features, expanded_features=spec.expanded_features, kernel_size=spec.kernel_size,
        strides=spec.stride, use_se=spec.se_features is not None, se_features=spec.se_features,
        drop_path_rate=self.drop_path_rate * layer.block_index / num_blocks,
        conv_norm_act=self.conv_norm_act, **common)

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
    norm = self.norm(train)
    if self.dtype is not None:
      x = x.astype(self.dtype)
    feature_maps = {}
    for layer in network_layers(spec, x.shape[-1]):
      module = self.layer(layer, norm, len(spec.blocks))
      x = module(x) if layer.kind == LayerKind.CONV else module(x, train)
      feature_maps[layer.out_stride] = x
    if features:
      return {s: feature_maps[s] for s in self.feature_strides}

    x = global_average_pool(x)
    if spec.head_features:
      x = nn.Dense(spec.head_features, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="head")(x)
      x = self.head_activation()(x)
    if self.num_classes == 0:
      return x
    rate = spec.default_dropout if self.dropout_rate is None else self.dropout_rate
    x = nn.Dropout(rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=classifier_kernel_init, name="classifier")(x)

  def feature_channels(self) -> dict[int, int]:
    """Channel count of each map returned by `features=True`, without running the network."""
    channels = {layer.out_stride: layer.out_features
                for layer in network_layers(self.network_spec())}
    return {s: channels[s] for s in self.feature_strides}
