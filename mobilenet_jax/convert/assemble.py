"""Copy a reference implementation's weights into our variable tree, checking every one.

A source is a flat mapping `{key: array}` (a PyTorch state dict, or a Keras model's weights by
path). A `Family` says which of our models it can be, how its layers are named and what layout its
kernels have. `convert_family` tries the family's width multipliers in order, keeps the first under
which every variable of our network is filled with an array of the right shape and every source
array is used, and otherwise raises `ConversionError` listing the missing, unexpected and
mismatching keys: nothing is skipped silently.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np

from mobilenet_jax.convert.plan import DENSE, DEPTHWISE, Unit, network_units, probe
from mobilenet_jax.models.registry import create_model

# (weights layer, norm layer or None) holding a unit's variables.
Namer = Callable[[Unit], tuple[str, Optional[str]]]
MAX_LISTED = 200   # per section of an error message; the count is always given


class ConversionError(ValueError):
  """The weights do not fit any network we can build; the message lists every offending key."""


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one library names and lays out weights (its parameter names, kernel axes and norm
  statistics: `KERAS`, `TORCH` and `tflite_source.TFLITE`)."""
  separator: str
  kernel: str
  bias: str
  norm: Mapping[str, str]               # our BatchNorm variable name -> the library's
  conv: Callable[[np.ndarray, bool], np.ndarray]   # (kernel, depthwise) -> [k, k, in, out]
  dense: Callable[[np.ndarray], np.ndarray]        # kernel -> [in, out]
  dense_ndims: tuple[int, ...]
  out_axis: int                         # axis of a kernel holding the output features
  optional: tuple[str, ...] = ()        # norm suffixes that may be present and carry nothing

  def key(self, layer: str, suffix: str) -> str:
    return f"{layer}{self.separator}{suffix}"


def _torch_dense(w: np.ndarray) -> np.ndarray:
  # Linear [out, in], or a 1x1 conv [out, in, 1, 1] on a pooled map.
  return w.reshape(w.shape[0], w.shape[1]).T


def _keras_dense(w: np.ndarray) -> np.ndarray:
  # Dense [in, out], or a 1x1 Conv2D [1, 1, in, out] on a pooled map.
  return w.reshape(w.shape[-2], w.shape[-1])


TORCH = Layout(
    separator=".", kernel="weight", bias="bias",
    norm={"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"},
    # OIHW -> HWIO; the same transpose turns a depthwise [C, 1, k, k] into Flax's [k, k, 1, C].
    conv=lambda w, depthwise: w.transpose(2, 3, 1, 0),
    dense=_torch_dense, dense_ndims=(2, 4), out_axis=0, optional=("num_batches_tracked",))

KERAS = Layout(
    separator="/", kernel="kernel", bias="bias",
    norm={"scale": "gamma", "bias": "beta", "mean": "moving_mean", "var": "moving_variance"},
    # Conv2D is HWIO already; DepthwiseConv2D is [k, k, C, depth_multiplier=1] -> [k, k, 1, C].
    conv=lambda w, depthwise: w.transpose(0, 1, 3, 2) if depthwise else w,
    dense=_keras_dense, dense_ndims=(2, 4), out_axis=-1)


def to_numpy(value: Any) -> np.ndarray:
  """A float32 numpy copy of a numpy array, torch tensor (any device, bf16 too) or Keras value."""
  if hasattr(value, "detach"):   # torch.Tensor, without importing torch
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    value = value.numpy()
  elif hasattr(value, "numpy") and not isinstance(value, np.ndarray):
    value = value.numpy()
  return np.asarray(value, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Family:
  """What a source can be: one `create_model` name, several candidate widths."""
  description: str                    # e.g. "timm mobilenetv3_large_100", for messages
  model_name: str
  namer: Namer
  layout: Layout
  options: Mapping[str, Any]          # padding, bn_epsilon, width_rule, ...
  widths: tuple[float, ...]           # width multipliers to try, most likely first
  has_head: bool = False              # V3: a pooled hidden layer that headless sources may omit
  hint: str = ""                      # appended to errors: what the family cannot represent


@dataclasses.dataclass(frozen=True)
class Conversion:
  """Converted weights: `create_model(model_name, **options)` applied to `variables` reproduces
  the reference. `preprocessing`: the source's eval recipe (`data.eval_recipes.EvalRecipe.to_dict`)
  when known."""
  model_name: str
  options: dict[str, Any]
  variables: dict[str, Any]
  preprocessing: Optional[dict[str, Any]] = None

  def model(self, **overrides: Any):
    """The Flax module; `overrides` sets options that do not change the weights (compute,
    dtype, dropout_rate, drop_path_rate, bn_momentum, ...)."""
    fixed = sorted(set(overrides) & set(self.options))
    if fixed:
      raise ValueError(f"options {fixed} are fixed by the converted weights "
                       f"({ {k: self.options[k] for k in fixed} }); leave them out")
    return create_model(self.model_name, **self.options, **overrides)


class _Filler:
  """Fills one candidate network from a source, recording every problem instead of stopping."""

  def __init__(self, source: Mapping[str, np.ndarray], layout: Layout, drop_background: bool):
    self.source, self.layout, self.drop_background = source, layout, drop_background
    self.used: set[str] = set()
    self.missing: list[str] = []
    self.mismatched: list[str] = []
    self.flat: dict[tuple[str, ...], np.ndarray] = {}

  def take(self, key: str) -> Optional[np.ndarray]:
    if key not in self.source:
      self.missing.append(key)
      return None
    self.used.add(key)
    return self.source[key]

  def put(self, key: str, raw: Optional[np.ndarray], convert: Callable[[np.ndarray], np.ndarray],
          ndims: tuple[int, ...], target: tuple[str, ...], shape: tuple[int, ...]) -> None:
    if raw is None:
      return
    try:
      value = convert(raw) if raw.ndim in ndims else raw
    except ValueError:   # e.g. a 3x3 kernel where a 1x1 conv or a Dense layer belongs
      value = raw
    if value.shape != shape:
      self.mismatched.append(f"{key} {tuple(raw.shape)} -> {'/'.join(target)} needs {shape}")
      return
    self.flat[target] = value

  def unit(self, unit: Unit, names: tuple[str, Optional[str]]) -> None:
    layer, norm = names
    shapes = unit.variable_shapes()
    lay = self.layout
    if unit.kind == DENSE:
      kernel_target, bias_target = (("params", *unit.path, n) for n in ("kernel", "bias"))
      kernel, bias = self.take(lay.key(layer, lay.kernel)), self.take(lay.key(layer, lay.bias))
      dense = lay.dense
      if unit.role == "classifier" and self.drop_background:
        # TF-slim checkpoints have 1001 classes, 0 = background (TF-slim `datasets/imagenet.py`).
        dense = lambda w, d=dense: d(w)[:, 1:]  # noqa: E731
        bias = None if bias is None else bias[1:]
      self.put(lay.key(layer, lay.kernel), kernel, dense, lay.dense_ndims, kernel_target,
               shapes[kernel_target])
      self.put(lay.key(layer, lay.bias), bias, lambda b: b, (1,), bias_target, shapes[bias_target])
      return
    depthwise = unit.kind == DEPTHWISE
    target = ("params", *unit.path, "conv", "kernel")
    self.put(lay.key(layer, lay.kernel), self.take(lay.key(layer, lay.kernel)),
             lambda w: lay.conv(w, depthwise), (4,), target, shapes[target])
    for ours, theirs in lay.norm.items():
      collection = "batch_stats" if ours in ("mean", "var") else "params"
      target = (collection, *unit.path, "norm", ours)
      key = lay.key(norm, theirs)
      self.put(key, self.take(key), lambda v: v, (1,), target, shapes[target])
    for suffix in lay.optional:
      key = lay.key(norm, suffix)
      if key in self.source:
        self.used.add(key)

  def problems(self) -> list[str]:
    unexpected = sorted(set(self.source) - self.used)
    sections = []
    for title, keys in (("missing keys", self.missing), ("unexpected keys", unexpected),
                        ("shape mismatches", self.mismatched)):
      if keys:
        listed = keys[:MAX_LISTED]
        more = f"\n    ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
        sections.append(f"  {title} ({len(keys)}):\n    " + "\n    ".join(listed) + more)
    return sections

  def variables(self) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in sorted(self.flat.items()):
      node = tree
      for name in path[:-1]:
        node = node.setdefault(name, {})
      node[path[-1]] = value
    return tree


def classifier_outputs(source: Mapping[str, np.ndarray], family: Family) -> Optional[int]:
  """Output width of the source's classifier, or None when it has none (a headless network)."""
  layer, _ = family.namer(probe("classifier"))
  kernel = source.get(family.layout.key(layer, family.layout.kernel))
  return None if kernel is None else int(kernel.shape[family.layout.out_axis])


def check_against_model(conversion: Conversion) -> None:
  """Our unit walk must produce exactly the variables Flax creates for the model; anything else is
  a bug in `plan.network_units`, reported before any wrong weights can be used."""
  import jax
  import jax.numpy as jnp

  model = conversion.model()
  expected = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  want = {tuple(k.key for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(expected)}
  got = {tuple(k.key for k in path): tuple(leaf.shape)
         for path, leaf in jax.tree_util.tree_leaves_with_path(conversion.variables)}
  if want != got:
    diff = sorted(set(want.items()) ^ set(got.items()))
    raise RuntimeError(f"internal error: converted variables differ from {conversion.model_name}'s "
                       f"own: {diff[:20]}; please report this")


def convert_family(source: Mapping[str, np.ndarray], family: Family,
                   drop_background: bool = True) -> Conversion:
  """Converts `source` (`{key: float32 array}`) into one of `family`'s networks.

  The number of classes comes from the source's classifier (0 when it has none); a 1001-way
  classifier loses its background class 0 unless `drop_background=False`. For a family with a V3
  head, a source without the head layer gives `head_features=0` (a headless Keras V3).
  """
  outputs = classifier_outputs(source, family)
  drop = bool(drop_background and outputs == 1001)
  options = dict(family.options, num_classes=0 if outputs is None else outputs - drop)
  if family.has_head:
    head_layer, _ = family.namer(probe("head"))
    if family.layout.key(head_layer, family.layout.kernel) not in source:
      options["head_features"] = 0
  first_problems, tried = None, set()
  for width in family.widths:
    candidate = dict(options, width_multiplier=width)
    try:
      model = create_model(family.model_name, **candidate)
    except ValueError:
      continue
    spec = model.network_spec()
    if spec in tried:   # many widths round to the same network
      continue
    tried.add(spec)
    filler = _Filler(source, family.layout, drop)
    for unit in network_units(spec, model.num_classes):
      try:
        names = family.namer(unit)
      except KeyError:
        filler.mismatched.append(f"{family.description} has no layer for our {'/'.join(unit.path)}")
        continue
      filler.unit(unit, names)
    problems = filler.problems()
    if not problems:
      conversion = Conversion(family.model_name, candidate, filler.variables())
      check_against_model(conversion)
      return conversion
    if first_problems is None:
      first_problems = (width, problems)
  width, problems = first_problems if first_problems else (None, ["  no width multiplier fits"])
  raise ConversionError(
      f"these weights do not fit {family.model_name} as {family.description} "
      f"(tried {len(tried)} distinct width multipliers; shown for width {width}):\n"
      + "\n".join(problems) + (f"\n{family.hint}" if family.hint else ""))


def width_candidates(preferred: Iterable[float] = ()) -> tuple[float, ...]:
  """Width multipliers to try: `preferred`, the published ones, multiples of 0.05, then of 0.01 up
  to 3. Channel counts are rounded, so nearby multipliers can build the same network; the first
  that fits is the one reported."""
  published = (1.0, 0.75, 0.5, 0.35, 0.25, 1.3, 1.4)
  coarse = tuple(round(0.05 * i, 2) for i in range(1, 61))
  fine = tuple(round(0.01 * i, 2) for i in range(1, 301))
  return tuple(dict.fromkeys((*preferred, *published, *coarse, *fine)))
