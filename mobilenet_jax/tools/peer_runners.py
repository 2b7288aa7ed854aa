"""The benchmark's reference rows: PyTorch (torchvision's models, timm's V1) and Keras 3 on JAX."""

from __future__ import annotations

import argparse
import contextlib

import numpy as np

from mobilenet_jax.tools.timing import Runner, time_calls
from mobilenet_jax.tools.workload import (LEARNING_RATE, MOMENTUM, NUM_CLASSES, keras_model,
                                          torch_model)


def torch_runner(name: str, mode: str, batch: int, resolution: int, dtype: str,
                 options: argparse.Namespace) -> Runner:
  import torch  # pylint: disable=g-import-not-at-top
  model = torch_model(name, NUM_CLASSES)
  device = options.torch_device
  channels_last = (options.torch_channels_last == "on"
                   or (options.torch_channels_last == "auto" and device == "cuda"))
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  model = model.to(device=device, memory_format=memory_format)
  generator = torch.Generator().manual_seed(0)
  images = torch.randn(batch, 3, resolution, resolution, generator=generator)
  images = images.to(device=device, memory_format=memory_format)
  labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator).to(device)
  autocast = (torch.autocast(device_type=device, dtype=torch.bfloat16) if dtype == "bfloat16"
              else contextlib.nullcontext())
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  if options.torch_compile:
    model = torch.compile(model)
  note = "+".join(n for n, on in (("channels_last", channels_last),
                                  ("torch.compile", options.torch_compile),
                                  ("bf16 autocast", dtype == "bfloat16")) if on)

  if mode in ("infer", "latency"):
    model.eval()

    def step():
      with torch.inference_mode(), autocast:
        model(images)
      sync()
  else:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

    def step():
      optimizer.zero_grad(set_to_none=True)
      with autocast:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
      loss.backward()
      optimizer.step()
      sync()
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  first = time_calls(step, 1)[0]
  second = time_calls(step, 1)[0]
  peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
  return Runner(step, max(first - second, 0.0), peak, None, note)


# ----------------------------------------------------------------------------------------------
# Keras 3 on the JAX backend


def keras_runner(name: str, mode: str, batch: int, resolution: int, dtype: str,
                 options: argparse.Namespace) -> Runner:
  del options
  import keras  # pylint: disable=g-import-not-at-top
  if keras.backend.backend() != "jax":
    raise RuntimeError(f"keras runs on the {keras.backend.backend()!r} backend; set "
                       "KERAS_BACKEND=jax before anything imports keras")
  previous_policy = keras.config.dtype_policy()
  keras.config.set_dtype_policy("mixed_bfloat16" if dtype == "bfloat16" else "float32")
  try:
    model = keras_model(name, resolution, NUM_CLASSES)
  finally:
    keras.config.set_dtype_policy(previous_policy)
  rng = np.random.default_rng(0)
  images = rng.standard_normal((batch, resolution, resolution, 3), np.float32)
  labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
  if mode in ("infer", "latency"):
    step = lambda: model.predict_on_batch(images)
  else:
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    step = lambda: model.train_on_batch(images, labels)
  first = time_calls(step, 1)[0]
  second = time_calls(step, 1)[0]
  return Runner(step, max(first - second, 0.0), None, None, "predict_on_batch"
                if mode != "train" else "train_on_batch")
