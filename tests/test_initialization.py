"""`mj.init_variables` / `trace_init`: `model.init`'s values from a vectorised program (two hashes,
each group of like draws evaluated once, fills made on the host)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mobilenet_jax as mj
from mobilenet_jax.models.initialization import trace_init

IMAGES = jnp.zeros((1, 32, 32, 3), jnp.float32)


@pytest.fixture(scope="module")
def model():
  return mj.create_model("mobilenet_v3_small", width_multiplier=0.35, num_classes=10)


@pytest.fixture(scope="module")
def model_init(model):
  """`jax.jit(model.init)` as a function of the key (compiled once for the module)."""
  return jax.jit(lambda key: model.init(key, IMAGES, train=False))


def _assert_same(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, got, want)


def _threefry_calls(lowered_text):
  return len(re.findall(r"call @threefry2x32", lowered_text))


def test_init_variables_equals_model_init(model, model_init):
  """The same values as `jax.jit(model.init)` for the same seed (and key), with the papers'
  references' distributions (He-normal on fan-out for convs, ones and zeros for BatchNorm,
  N(0, 0.01) for the classifier)."""
  got = mj.init_variables(model, resolution=32, seed=3)
  _assert_same(got, model_init(jax.random.key(3)))
  _assert_same(mj.init_variables(model, 32, key=jax.random.key(3)), got)
  assert not np.array_equal(mj.init_variables(model, 32, seed=4)["params"]["stem"]["conv"]["kernel"],
                            got["params"]["stem"]["conv"]["kernel"])
  kernel = got["params"]["blocks_3"]["expand"]["conv"]["kernel"]   # 1x1, fan_out = out channels
  assert abs(float(kernel.std()) - np.sqrt(2.0 / kernel.shape[-1])) < 0.2 * np.sqrt(2.0 / kernel.shape[-1])
  assert float(got["params"]["classifier"]["kernel"].std()) < 0.012
  np.testing.assert_array_equal(got["params"]["stem"]["norm"]["scale"], 1.0)
  np.testing.assert_array_equal(got["batch_stats"]["stem"]["norm"]["var"], 1.0)


def test_the_hashes_are_gathered_into_two(model):
  """What makes it compile fast: `model.init` hashes once per parameter (a fold_in for its key, a
  draw for its values); the gathered program hashes twice in all."""
  init = lambda key: model.init(key, IMAGES, train=False)
  key = jax.random.key(0)
  assert _threefry_calls(jax.jit(init).lower(key).as_text()) > 20
  assert _threefry_calls(trace_init(init, key).lower().as_text()) == 2


def test_the_program_has_one_output_per_group_of_draws(model):
  """The rest of the speed: the drawn parameters leave the program as one flat array per group of
  chains that perform the same operations (He-normal convs; the SE and classifier layers), and the
  fills (BatchNorm's ones and zeros, biases) as one vector; the parameters are split on the host."""
  init = lambda key: model.init(key, IMAGES, train=False)
  variables = jax.eval_shape(init, jax.random.key(0))
  outputs = jax.tree.leaves(trace_init(init, jax.random.key(0)).lower().out_info)
  assert len(jax.tree.leaves(variables)) > 100
  assert len(outputs) == 3, [o.shape for o in outputs]


def test_flax_initializers_keep_their_values():
  """Flax's initializers, float32 and bfloat16, drawn through the vectorised program: the bits
  `jax.jit` gives. (XLA folds a draw's consecutive constant multiplications into one, e.g.
  sqrt(2) * erf_inv(u) * stddev; the vectorised chains must fold them the same way.)"""
  from flax import linen as nn
  I = nn.initializers
  inits = {"vs_normal": I.variance_scaling(2.0, "fan_out", "normal"),
           "vs_truncated": I.variance_scaling(1.0, "fan_in", "truncated_normal"),
           "vs_uniform": I.variance_scaling(1 / 3, "fan_avg", "uniform"),
           "lecun_normal": I.lecun_normal(), "glorot_uniform": I.glorot_uniform(),
           "he_uniform": I.he_uniform(), "normal": I.normal(0.02), "uniform": I.uniform(0.1),
           "truncated": I.truncated_normal(0.02),
           "truncated_bounds": I.truncated_normal(0.5, lower=-1.0, upper=3.0),
           "orthogonal": I.orthogonal(), "constant": I.constant(0.3), "ones": I.ones,
           "zeros": I.zeros}

  class Params(nn.Module):
    @nn.compact
    def __call__(self, x):
      for name, init in inits.items():
        self.param(name, init, (5, 7))
        if name != "orthogonal":   # a QR decomposition: no bfloat16 on CPU
          self.param(name + "_bf16", init, (11, 13), jnp.bfloat16)
      return x

  init = lambda key: Params().init(key, jnp.zeros(3))
  want = jax.jit(init)
  for seed in (0, 1):
    got = trace_init(init, jax.random.key(seed))()
    expected = want(jax.random.key(seed))
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for path, a, b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(got),
                          jax.tree.leaves(expected)):
      assert a.dtype == b.dtype and np.asarray(a).tobytes() == np.asarray(b).tobytes(), path[0]


def test_sharded_outputs_are_placed_as_asked(model, model_init):
  """With `out_shardings`, every output (split or filled on the host, or computed in the program)
  is placed with that sharding, and `out_info` says so."""
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  init = lambda key: model.init(key, IMAGES, train=False)
  traced = trace_init(init, jax.random.key(2), out_shardings=replicated)
  got = traced()
  _assert_same(got, model_init(jax.random.key(2)))
  assert all(x.sharding == replicated for x in jax.tree.leaves(got))
  assert all(s.sharding == replicated for s in jax.tree.leaves(traced.out_info))


def test_keys_derived_otherwise_keep_their_values(model, model_init):
  """Draws whose keys are not `fold_in(argument, constant)` (here every parameter's key is folded
  from a key derived first) are evaluated as traced: still `model.init`'s values."""
  key = jax.random.key(5)
  derived = lambda key: model.init(jax.random.fold_in(key, 7), IMAGES, train=False)
  _assert_same(trace_init(derived, key)(), model_init(jax.random.fold_in(key, 7)))


def test_other_prngs_raw_keys_and_train_states_initialise_as_under_jit():
  """Another PRNG (its draws are not gathered), a raw `jax.random.PRNGKey`, and a function that
  builds more than variables (an optimizer state, a key of its own) give what `jax.jit` gives."""
  import optax
  from flax import linen as nn
  model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
  tx = optax.sgd(0.1, momentum=0.9)

  def state(key):
    params = model.init(key, jnp.zeros((1, 4)))["params"]
    return params, tx.init(params), jax.random.key_data(jax.random.split(key)[1])

  raw = jax.random.PRNGKey(11)
  _assert_same(trace_init(state, raw)(), jax.jit(state)(jax.random.wrap_key_data(raw)))
  rbg = jax.random.key(5, impl="rbg")
  _assert_same(trace_init(state, rbg)(), jax.jit(state)(rbg))
