"""Shared helpers of the config files: the "width=0.75,resolution=160" argument parser."""

from __future__ import annotations

from typing import Any

import ml_collections

_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def _convert(key: str, text: str, default: Any) -> Any:
  try:
    if isinstance(default, bool):
      if text.lower() in _TRUE:
        return True
      if text.lower() in _FALSE:
        return False
      raise ValueError(text)
    if isinstance(default, int):
      return int(text)
    if isinstance(default, float):
      return float(text)
  except ValueError:
    raise ValueError(f"config argument {key}={text!r}: expected a {type(default).__name__} "
                     f"like {default!r}") from None
  return text


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
  """Parses "key=value,key=value" with the types of the defaults in `spec` (big_vision style).

  A bare `key` means key=True for booleans. Unknown keys are errors listing the known ones.
  """
  result = dict(spec)
  for item in filter(None, (part.strip() for part in (arg or "").split(","))):
    key, sep, value = item.partition("=")
    key = key.strip()
    if key not in spec:
      raise ValueError(f"unknown config argument {key!r}; this config accepts: "
                       f"{', '.join(f'{k}={v!r}' for k, v in spec.items())}")
    if not sep:
      if not isinstance(spec[key], bool):
        raise ValueError(f"config argument {key!r} needs a value, e.g. {key}={spec[key]!r}")
      value = "true"
    result[key] = _convert(key, value.strip(), spec[key])
  return ml_collections.ConfigDict(result)


def set_imagenet(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """ImageNet-1k (tfds imagenet2012, prepared by hand: see its manual-download instructions)."""
  config.dataset.name = "imagenet2012"
  config.dataset.train_split = "train"
  config.dataset.eval_split = "validation"
  config.dataset.resize_method = "bicubic"
  config.dataset.crop_fraction = 0.875
  config.dataset.augment = "inception_crop_flip"
  config.dataset.cache = False
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  config.eval_every_steps = 10_000
  return config
