"""torchvision and timm MobileNet state dicts -> our model.

Key names follow the modules of torchvision `models/mobilenetv2.py`, `mobilenetv3.py` and timm
`models/efficientnet.py` (V1, V2), `mobilenetv3.py`. PyTorch pads symmetrically, except timm's
`tf_*` ports of the TensorFlow checkpoints (TF SAME, `Conv2dSame`); BatchNorm epsilon is 1e-5
(torchvision V2, timm) or 1e-3 (torchvision `mobilenetv3.py`: `BatchNorm2d, eps=0.001`; timm
`tf_*`: `_efficientnet_builder.BN_EPS_TF_DEFAULT`).
torch itself is not needed: values may be numpy arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Mapping, Optional

from mobilenet_jax.convert.assemble import (TORCH, Conversion, Family, convert_family, to_numpy,
                                            width_candidates)
from mobilenet_jax.convert.plan import Unit
from mobilenet_jax.data import eval_recipes

TORCHVISION_ARCHS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
# timm groups blocks into stages (its arch_def lists); state dict keys are blocks.{stage}.{index}.
TIMM_STAGES = {
    "mobilenet_v1": (1, 2, 2, 6, 2),        # efficientnet.py _gen_mobilenet_v1
    "mobilenet_v2": (1, 2, 3, 4, 3, 3, 1),  # efficientnet.py _gen_mobilenet_v2
    "mobilenet_v3_large": (1, 2, 3, 4, 2, 3),   # mobilenetv3.py _gen_mobilenet_v3, then cn 960
    "mobilenet_v3_small": (1, 2, 3, 2, 3),      # ... then cn 576
}
TIMM_NAME = re.compile(r"(tf_)?mobilenetv(?P<version>[123])_(?:(?P<variant>large|small)_)?"
                       r"(?P<minimal>minimal_)?(?P<width>\d{3})")
TIMM_UNSUPPORTED = {
    "mobilenetv1_100h": "has a 1x1 conv head (1024, BN, act) after the blocks, which our V1 lacks",
    "mobilenetv2_110d": "'d' variants add blocks per stage (depth multiplier); our V2 has the "
                        "paper's block counts",
    "mobilenetv2_120d": "'d' variants add blocks per stage (depth multiplier)",
    "mobilenetv3_large_150d": "'d' variants add blocks per stage (depth multiplier)",
    "mobilenetv3_rw": "its first block has no residual, its SE uses the block's activation and "
                      "unrounded widths, and its head conv has no bias (mobilenetv3.py "
                      "_gen_mobilenet_v3_rw)",
}


def _torchvision_v2_names(unit: Unit, num_blocks: int) -> tuple[str, Optional[str]]:
  # features.0 stem, features.1..17 blocks, features.18 last conv, classifier.1 (after dropout).
  if unit.role == "stem":
    return "features.0.0", "features.0.1"
  if unit.role == "last_conv":
    return f"features.{num_blocks + 1}.0", f"features.{num_blocks + 1}.1"
  if unit.role == "classifier":
    return "classifier.1", None
  block, j = f"features.{unit.block + 1}.conv", unit.index
  if unit.role == "project":   # a bare Conv2d and BatchNorm2d, not a Conv2dNormActivation
    return f"{block}.{j}", f"{block}.{j + 1}"
  if unit.role not in ("expand", "depthwise"):
    raise KeyError(unit.role)
  return f"{block}.{j}.0", f"{block}.{j}.1"


def _torchvision_v3_names(unit: Unit, num_blocks: int) -> tuple[str, Optional[str]]:
  # classifier: Linear(960, 1280) .0, Hardswish .1, Dropout .2, Linear(1280, classes) .3.
  fixed = {"stem": ("features.0.0", "features.0.1"),
           "last_conv": (f"features.{num_blocks + 1}.0", f"features.{num_blocks + 1}.1"),
           "head": ("classifier.0", None), "classifier": ("classifier.3", None)}
  if unit.role in fixed:
    return fixed[unit.role]
  block = f"features.{unit.block + 1}.block.{unit.index}"
  if unit.role == "se_reduce":
    return f"{block}.fc1", None
  if unit.role == "se_expand":
    return f"{block}.fc2", None
  if unit.role not in ("expand", "depthwise", "project"):
    raise KeyError(unit.role)
  return f"{block}.0", f"{block}.1"


# timm layer names inside a block: InvertedResidual when it expands, else DepthwiseSeparableConv.
_TIMM_INVERTED = {"expand": ("conv_pw", "bn1"), "depthwise": ("conv_dw", "bn2"),
                  "project": ("conv_pwl", "bn3")}
_TIMM_SEPARABLE = {"depthwise": ("conv_dw", "bn1"), "pointwise": ("conv_pw", "bn2"),
                   "project": ("conv_pw", "bn2")}


def _timm_names(unit: Unit, stages: tuple[int, ...], v3: bool) -> tuple[str, Optional[str]]:
  if unit.role == "stem":
    return "conv_stem", "bn1"
  if unit.role == "last_conv":   # V3: a ConvBnAct block after the stages; V1/V2: the model head
    return (f"blocks.{len(stages)}.0.conv", f"blocks.{len(stages)}.0.bn1") if v3 else (
        "conv_head", "bn2")
  if unit.role == "head":
    return "conv_head", None
  if unit.role == "classifier":
    return "classifier", None
  stage, first = 0, 0
  while unit.block >= first + stages[stage]:
    first += stages[stage]
    stage += 1
  block = f"blocks.{stage}.{unit.block - first}"
  if unit.role == "se_reduce":
    return f"{block}.se.conv_reduce", None
  if unit.role == "se_expand":
    return f"{block}.se.conv_expand", None
  conv, norm = (_TIMM_INVERTED if unit.expands else _TIMM_SEPARABLE)[unit.role]
  return f"{block}.{conv}", f"{block}.{norm}"


def supported_archs() -> str:
  return ("torchvision: " + ", ".join(TORCHVISION_ARCHS) + "; timm: mobilenetv1_100, "
          "mobilenetv1_125, mobilenetv2_{035,050,075,100,140}, mobilenetv3_{large,small}_NNN, "
          "tf_mobilenetv3_{large,small}_NNN, tf_mobilenetv3_{large,small}_minimal_100")


def torch_family(arch: str) -> Family:
  """The network a torchvision or timm architecture name denotes, and how its keys are named.

  timm names may carry a pretrained tag (`mobilenetv3_large_100.ra_in1k`); the width comes from the
  name. torchvision names carry none: the width is found from the weights' shapes.
  """
  if arch in TORCHVISION_ARCHS:
    v3 = arch != "mobilenet_v2"
    namer = _torchvision_v3_names if v3 else _torchvision_v2_names
    num_blocks = {"mobilenet_v2": 17, "mobilenet_v3_large": 15, "mobilenet_v3_small": 11}[arch]
    options = {"padding": "symmetric", "bn_epsilon": 1e-3 if v3 else 1e-5}
    if v3:
      options["width_rule"] = "torchvision"
    return Family(f"torchvision {arch}", arch, functools.partial(namer, num_blocks=num_blocks),
                  TORCH, options, width_candidates(), has_head=v3)
  base = arch.split(".")[0]
  if base in TIMM_UNSUPPORTED:
    raise ValueError(f"timm {base} cannot be represented by our models: "
                     f"{TIMM_UNSUPPORTED[base]}")
  match = TIMM_NAME.fullmatch(base)
  if match is None or (match["version"] == "3") != bool(match["variant"]) or (
      match["minimal"] and match["version"] != "3"):
    raise ValueError(f"unknown arch {arch!r}; supported: {supported_archs()}")
  tf_port = bool(match[1])
  if match["version"] == "3":
    name = f"mobilenet_v3_{match['variant']}" + ("_minimal" if match["minimal"] else "")
    stages = TIMM_STAGES[f"mobilenet_v3_{match['variant']}"]
  else:
    name = f"mobilenet_v{match['version']}"
    stages = TIMM_STAGES[name]
  v3 = match["version"] == "3"
  options = {"padding": "same" if tf_port else "symmetric", "bn_epsilon": 1e-3 if tf_port else 1e-5}
  if v3:
    options["width_rule"] = "tf"
  hint = ("timm scales the V3 stem and keeps the 1280/1024 head for widths > 1, unlike the "
          "TF/Keras rule our width_rule='tf' follows" if v3 else "")
  return Family(f"timm {base}", name, functools.partial(_timm_names, stages=stages, v3=v3), TORCH,
                options, (int(match["width"]) / 100,), has_head=v3, hint=hint)


def convert_torch(state_dict: Mapping[str, Any], arch: str, drop_background: bool = True
                  ) -> Conversion:
  """state dict -> `Conversion` (model name, options, variables, eval preprocessing of the
  library's recipe); see `from_torch`."""
  family = torch_family(arch)
  source = {key: to_numpy(value) for key, value in state_dict.items()}
  conversion = convert_family(source, family, drop_background)
  recipe = eval_recipes.torchvision() if arch in TORCHVISION_ARCHS else eval_recipes.timm(arch)
  return dataclasses.replace(conversion, preprocessing=recipe.to_dict())


def from_torch(state_dict: Mapping[str, Any], arch: str, *, drop_background: bool = True,
               **model_options: Any):
  """A torchvision or timm MobileNet state dict as `(our Flax module, variables)`.

  arch: torchvision `mobilenet_v2`, `mobilenet_v3_large`, `mobilenet_v3_small` (any width_mult,
  found from the shapes), or a timm name such as `mobilenetv1_100`, `mobilenetv2_050`,
  `mobilenetv3_large_100`, `tf_mobilenetv3_small_minimal_100`. Values may be torch tensors or numpy
  arrays. The number of classes is read from the classifier (none: headless, `num_classes=0`).
  Unknown, missing or mismatching keys raise `ConversionError` listing them. `model_options` sets
  options that do not change the weights (compute, dtype, dropout_rate, ...).
  """
  conversion = convert_torch(state_dict, arch, drop_background)
  return conversion.model(**model_options), conversion.variables
