"""Where MobileNetV2 training time goes: each V2 block's forward and forward+backward in JAX against
torchvision's InvertedResidual, and the depthwise kernel gradient by row-group size.

    python experiments/profile_v2_blocks.py                 # blocks (batch 32, 224x224 network shapes)
    python experiments/profile_v2_blocks.py --kernel-grad   # _shifted_kernel_grad row groups

Figures are medians of 5 calls after 2 warm-up calls, in ms. torch runs channels_last with 2 threads.
Used to find where the V2 training step loses time against PyTorch (docs/performance.md).
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

BATCH = 32
# V2 Table 2 blocks at 224x224: (input channels, output channels, t, stride, input size).
V2_BLOCKS = [(32, 16, 1, 1, 112), (16, 24, 6, 2, 112), (24, 24, 6, 1, 56), (24, 32, 6, 2, 56),
             (32, 32, 6, 1, 28), (32, 64, 6, 2, 28), (64, 64, 6, 1, 14), (64, 96, 6, 1, 14),
             (96, 160, 6, 2, 14), (160, 160, 6, 1, 7), (160, 320, 6, 1, 7)]
# Depthwise layers of V1/V2 at 224: (size, channels, stride).
DEPTHWISE_LAYERS = [(112, 32, 1), (112, 96, 2), (56, 144, 1), (56, 128, 2), (28, 192, 1),
                    (14, 384, 1), (14, 512, 1), (7, 960, 1)]


def median_ms(call, repeats: int = 5) -> float:
  call()
  call()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3


def profile_blocks(compute: str) -> None:
  import torch
  from torchvision.models.mobilenetv2 import InvertedResidual as TorchInvertedResidual

  from mobilenet_jax import InvertedResidual
  from mobilenet_jax.compute import conv_norm_act_for
  from mobilenet_jax.models.layers import ConvNormAct

  torch.set_num_threads(2)
  for cin, cout, t, stride, size in V2_BLOCKS:
    block = InvertedResidual(cout, expansion=t, strides=stride,
                             conv_norm_act=conv_norm_act_for(compute) or ConvNormAct)
    x = jnp.asarray(np.random.randn(BATCH, size, size, cin).astype(np.float32))
    variables = jax.jit(functools.partial(block.init, train=False))(jax.random.key(0), x)

    def loss(params, x):
      y, _ = block.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                         train=True, mutable=["batch_stats"])
      return jnp.sum(y * y)

    forward = jax.jit(loss)
    backward = jax.jit(jax.grad(loss, argnums=(0, 1)))
    jax_fwd = median_ms(lambda: jax.block_until_ready(forward(variables["params"], x)))
    jax_both = median_ms(lambda: jax.block_until_ready(backward(variables["params"], x)))

    reference = TorchInvertedResidual(cin, cout, stride, t).train().to(
        memory_format=torch.channels_last)
    xt = torch.randn(BATCH, cin, size, size).to(memory_format=torch.channels_last)
    xt.requires_grad_(True)

    def torch_both():
      (reference(xt) ** 2).sum().backward()

    def torch_fwd():
      with torch.no_grad():
        (reference(xt) ** 2).sum()

    both, fwd = median_ms(torch_both), median_ms(torch_fwd)
    print(f"{cin:4d}->{cout:4d} t{t} s{stride} {size:3d}px: jax fwd {jax_fwd:6.1f} fwd+bwd "
          f"{jax_both:7.1f} | torch fwd {fwd:6.1f} fwd+bwd {both:7.1f} | torch/jax {both / jax_both:4.2f}",
          flush=True)


def profile_kernel_grad() -> None:
  from mobilenet_jax.xla_cpu import depthwise

  for size, channels, stride in DEPTHWISE_LAYERS:
    padding = ((1, 1), (1, 1)) if stride == 1 else ((0, 1), (0, 1))
    x = jnp.asarray(np.random.randn(BATCH, size, size, channels).astype(np.float32))
    out = size // stride
    g = jnp.asarray(np.random.randn(BATCH, out, out, channels).astype(np.float32))
    row = []
    for row_group in (8, 14, None):   # None: the default rule (_row_group)
      grad = jax.jit(functools.partial(depthwise._shifted_kernel_grad,   # pylint: disable=protected-access
                                       kernel_shape=(3, 3, 1, channels), stride=stride,
                                       padding=padding, dtype=jnp.float32, row_group=row_group))
      ms = median_ms(lambda: jax.block_until_ready(grad(x, g)))
      row.append(f"{'default' if row_group is None else row_group}: {ms:6.1f}")
    print(f"{size:3d}x{size:<3d}x{channels:<4d} s{stride}  " + "  ".join(row), flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--kernel-grad", action="store_true", help="depthwise kernel gradient only")
  parser.add_argument("--compute", default="auto", help="auto | cpu | xla (mobilenet_jax/compute.py)")
  args = parser.parse_args()
  if args.kernel_grad:
    profile_kernel_grad()
  else:
    profile_blocks(args.compute)


if __name__ == "__main__":
  main()
