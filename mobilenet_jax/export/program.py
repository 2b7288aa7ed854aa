"""The program every export format starts from: the network with BatchNorm folded, as one function.

    program = deployment_program(model, variables, resolution=224, batch=1)
    logits = program.function(images)            # == model.apply(variables, images) up to rounding

Three choices make it convert well, measured against the reference libraries' own exports:

- BatchNorm is folded into the convolutions (`models/fold.py`; Jacob et al. 2018, section 3.2), so
  each conv unit is one convolution with a bias and a fused activation in TFLite and ONNX alike.
- The layers are XLA's own ops (the plain `ConvNormAct`, `compute="xla"`): converters read standard convolutions, not the
  XLA:CPU kernels' rearrangements. The values are the same.
- A Dense layer applied to an NHWC map (squeeze-and-excite's two layers on the pooled [N, 1, 1, C]
  map) is written as the 1x1 convolution it equals, as Keras and torchvision write it: TFLite's
  converter rejects the rank-4 matrix product (`tfl.batch_matmul` wants rank 3), and ONNX runtimes
  fuse a 1x1 Conv with its activation where a Gemm between two Reshapes stays three ops.

The function is traced once (`jax.make_jaxpr`) into plain lax operations, so each converter sees the
same program whatever Flax methods it patches while it traces.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
from flax import linen as nn

from mobilenet_jax.data.config import PIXEL_NORMALIZATIONS
from mobilenet_jax.models.builder import MIN_RESOLUTION, MobileNet
from mobilenet_jax.models.fold import batch_norm_epsilon, fold_batch_norm
from mobilenet_jax.models.layers import ConvNormAct

Batch = Union[int, str]   # an int >= 1, or "dynamic"
DYNAMIC = "dynamic"


@dataclasses.dataclass(frozen=True)
class Program:
  """The traced network: `function(images) -> logits` on `input_spec`'s shape and dtype."""
  function: Callable[[jax.Array], jax.Array]
  input_spec: jax.ShapeDtypeStruct     # NHWC; its batch is a symbolic dimension when dynamic
  resolution: int
  batch: Batch
  pixel_normalization: Optional[str]   # set: the input is 0..255 pixels, normalised inside


def parse_batch(batch: Batch) -> Batch:
  """An int >= 1 or "dynamic" (also from the command line's strings)."""
  if isinstance(batch, str) and batch != DYNAMIC:
    if not batch.isdigit():
      raise ValueError(f"batch must be an integer >= 1 or {DYNAMIC!r}, got {batch!r}")
    batch = int(batch)
  if batch != DYNAMIC and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
    raise ValueError(f"batch must be an integer >= 1 or {DYNAMIC!r}, got {batch!r}")
  return batch


def dense_on_maps_as_convolution(next_fun, args, kwargs, context):
  """Flax method interceptor: `nn.Dense` on an NHWC map computed as the 1x1 convolution it equals."""
  module = context.module
  if (not isinstance(module, nn.Dense) or context.method_name != "__call__"
      or jnp.ndim(args[0]) != 4):
    return next_fun(*args, **kwargs)
  params = module.variables["params"]
  x, kernel = nn.dtypes.promote_dtype(args[0], params["kernel"], dtype=module.dtype)
  y = jax.lax.conv_general_dilated(x, kernel[None, None], (1, 1), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  if module.use_bias:
    y = y + params["bias"].astype(y.dtype)
  return y


def deployment_program(model: MobileNet, variables: Mapping[str, Any], resolution: int = 224,
                       batch: Batch = 1, pixel_normalization: Optional[str] = None) -> Program:
  """The folded network as one traced function of NHWC float32 images [batch, R, R, 3].

  `pixel_normalization` ("inception", "imagenet" or "unit", see `data/preprocess.normalize`) makes
  the program take 0..255 pixels and normalise them itself (what a uint8-input model needs).
  Raises ValueError for a model or option that cannot be exported (see `fold_batch_norm`).
  """
  if not isinstance(model, MobileNet):
    raise ValueError(f"export takes a mobilenet_jax MobileNet, got {type(model).__name__}")
  if not isinstance(resolution, int) or resolution < MIN_RESOLUTION:
    raise ValueError(f"resolution must be an integer >= {MIN_RESOLUTION} (five stride-2 layers), "
                     f"got {resolution!r}")
  if pixel_normalization is not None and pixel_normalization not in PIXEL_NORMALIZATIONS:
    raise ValueError(f"pixel_normalization must be one of {sorted(PIXEL_NORMALIZATIONS)} or None, "
                     f"got {pixel_normalization!r}")
  batch = parse_batch(batch)
  model.validate()
  batch_norm_epsilon(model)   # raises when the model's norm is not a BatchNorm (nothing to fold)
  # Exported in float32 with XLA's own layers whatever the training dtype and compute were.
  folded_model, folded = fold_batch_norm(model.clone(conv_norm_act=ConvNormAct, dtype=None),
                                         variables)

  def network(images: jax.Array) -> jax.Array:
    if pixel_normalization is not None:
      mean, std = (jnp.asarray(v, jnp.float32) for v in PIXEL_NORMALIZATIONS[pixel_normalization])
      images = (images - mean) / std
    with nn.intercept_methods(dense_on_maps_as_convolution):
      return folded_model.apply(folded, images, train=False)

  size = jax.export.symbolic_shape("batch")[0] if batch == DYNAMIC else batch
  spec = jax.ShapeDtypeStruct((size, resolution, resolution, 3), jnp.float32)
  closed = jax.make_jaxpr(network)(spec)

  def function(images: jax.Array) -> jax.Array:
    return jax.core.eval_jaxpr(closed.jaxpr, closed.consts, images)[0]

  return Program(function, spec, resolution, batch, pixel_normalization)
