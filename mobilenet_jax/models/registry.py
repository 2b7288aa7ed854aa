"""`create_model(name, **options)` and `list_models()`: every network by name."""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

from mobilenet_jax.models.builder import MobileNet
from mobilenet_jax.models.mobilenet_v1 import MobileNetV1
from mobilenet_jax.models.mobilenet_v2 import MobileNetV2
from mobilenet_jax.models.mobilenet_v3 import MobileNetV3

_MODELS: dict[str, Callable[..., MobileNet]] = {
    "mobilenet_v1": MobileNetV1,
    "mobilenet_v1_conv": functools.partial(MobileNetV1, depthwise_separable=False),
    "mobilenet_v2": MobileNetV2,
    "mobilenet_v3_large": functools.partial(MobileNetV3, variant="large"),
    "mobilenet_v3_small": functools.partial(MobileNetV3, variant="small"),
    "mobilenet_v3_large_minimal": functools.partial(MobileNetV3, variant="large", minimal=True),
    "mobilenet_v3_small_minimal": functools.partial(MobileNetV3, variant="small", minimal=True),
}


def list_models() -> list[str]:
  """Names accepted by `create_model`."""
  return sorted(_MODELS)


def create_model(name: str, compute: Optional[str] = None, **options: Any) -> MobileNet:
  """Builds a network by name, e.g. `create_model("mobilenet_v3_large", width_multiplier=0.75)`.

  Options are the module's fields (num_classes, width_multiplier, expansion (V2), dropout_rate,
  drop_path_rate, dtype, param_dtype, bn_momentum, bn_epsilon, padding, ...). `compute` chooses
  how the conv units are computed (`mobilenet_jax/compute.py`: "auto" (default), "xla" or "cpu";
  same variables and values either way); a `conv_norm_act` factory may be given instead. Raises
  ValueError on an unknown name or option, or on values no network can be built from (alpha <= 0,
  t < 1, ...).
  """
  if name not in _MODELS:
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
  factory = _MODELS[name]
  cls = factory.func if isinstance(factory, functools.partial) else factory
  fields = {f for f in cls.__dataclass_fields__ if f not in ("parent", "name")}
  unknown = sorted(set(options) - fields)
  if unknown:
    raise ValueError(f"unknown option(s) {unknown} for {name}; valid options: "
                     f"{sorted(fields | {'compute'})}")
  if "conv_norm_act" in options:
    if compute is not None:
      raise ValueError("give compute or a conv_norm_act factory, not both")
  else:
    from mobilenet_jax import compute as compute_lib  # not at import

    conv_norm_act = compute_lib.conv_norm_act_for("auto" if compute is None else compute)
    if conv_norm_act is not None:
      options["conv_norm_act"] = conv_norm_act
  model = factory(**options)
  model.validate()
  return model
