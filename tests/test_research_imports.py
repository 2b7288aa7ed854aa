"""The research modules load no backend: importing them brings in neither the XLA:CPU room nor any
module that defines a custom VJP or asks JAX for its backend, and tracing a network never asks."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp

import mobilenet_jax as mj

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The one module outside the XLA:CPU room that asks for the backend: where `create_model` and
# `inference_function` resolve compute="auto" (once, before any tracing); imported when they run.
CHOOSER = "mobilenet_jax.compute"

SCRIPT = """
import inspect, json, sys
import mobilenet_jax
import mobilenet_jax.models
from mobilenet_jax.models import (blocks, builder, fold, initialization, layers, mobilenet_v1,
                                  mobilenet_v2, mobilenet_v3, norm, registry, spec)
loaded = sorted(m for m in sys.modules if m == "mobilenet_jax" or m.startswith("mobilenet_jax."))
words = ("default_backend", "custom_vjp", "custom_jvp")
print(json.dumps({m: [w for w in words if w in inspect.getsource(sys.modules[m])] for m in loaded}))
"""


def test_research_modules_load_no_backend():
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
  done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                        text=True, check=True)
  found = json.loads(done.stdout.splitlines()[-1])
  assert "mobilenet_jax.models.builder" in found and "mobilenet_jax.models.spec" in found
  assert [m for m in found if m.startswith("mobilenet_jax.xla_cpu")] == []
  assert CHOOSER not in found
  assert {m: words for m, words in found.items() if words} == {}


def test_tracing_a_network_asks_no_backend(monkeypatch):
  """The module config alone decides the program: the same on every backend."""
  model = mj.create_model("mobilenet_v3_small", compute="xla", width_multiplier=0.35,
                          num_classes=10)

  def refuse():
    raise AssertionError("jax.default_backend() was called while tracing the network")
  monkeypatch.setattr(jax, "default_backend", refuse)
  x = jnp.zeros((1, 32, 32, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  jax.make_jaxpr(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"],
                                       rngs={"dropout": jax.random.key(1)}))(variables)
