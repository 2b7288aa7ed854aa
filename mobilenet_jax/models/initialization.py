"""`init_variables`: a network's initial variables from one small, quickly compiled program.

`model.init` draws every parameter with its own Threefry hash: Flax derives each parameter's key with
`random.fold_in(key, hash(path))` and each initializer draws `random_bits(key, shape)`. On XLA:CPU each
of those hashes is compiled on its own (a loop and its fusions), about 0.1 s apiece: 5-10 s for a
MobileNet's ~60 drawn parameters, for a program that runs once.

`init_variables` traces `model.init` once and evaluates the traced program with every such hash
gathered into two: one vectorised `fold_in` for all the parameters' keys, and one `random_bits` for all
their elements. JAX's partitionable Threefry (`jax_threefry_partitionable`, on by default) makes each
element's bits a function of its key and its flat index only, so the gathered draw gives every
parameter the very bits `model.init` gives it; the rest of the program (uniform -> normal, scaling) is
`model.init`'s own. Anything else (another PRNG, keys not derived this way) is evaluated as traced.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.extend import core as jex_core
from jax.extend.random import threefry2x32_p

from mobilenet_jax.models.xla_cpu.compile_options import run_once_compiler_options

_ROOT = "root"  # the symbol of the program's key


def init_variables(model: nn.Module, resolution: int = 224, seed: int = 0, *,
                   key: Optional[jax.Array] = None, channels: int = 3) -> dict[str, Any]:
  """`jax.jit(model.init)(jax.random.key(seed), images, train=False)` for images of `resolution`: the
  same values, from a program that compiles several times faster. Returns `{'params',
  'batch_stats'}` (and any other collection the model creates).

  `key` replaces `seed` (any JAX key, e.g. one split from a larger program's).
  """
  key = jax.random.key(seed) if key is None else key
  shape = (1, resolution, resolution, channels)
  init = lambda key: model.init(key, jnp.zeros(shape, jnp.float32), train=False)
  return trace_init(init, key).lower().compile(run_once_compiler_options())()


def trace_init(init: Callable[[jax.Array], Any], key: jax.Array, *,
               out_shardings: Any = None) -> jax.stages.Traced:
  """`jax.jit(lambda: init(key), out_shardings=...).trace()` with the parameters' hashes gathered:
  the same values. `init` is any function of one key (a model's `init`, a train state's)."""
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)   # a raw uint32[2] key (jax.random.PRNGKey): the same bits
  closed, out_shape = jax.make_jaxpr(init, return_shape=True)(key)
  plan = _Draws.plan(closed.jaxpr, jax.random.key_impl(key))
  treedef = jax.tree.structure(out_shape)

  def program():
    draws = plan and plan.for_key(key)
    outs, _ = _evaluate(closed.jaxpr, closed.consts, [key], [_ROOT], draws)
    return jax.tree.unflatten(treedef, outs)

  return jax.jit(program, out_shardings=out_shardings).trace()


class _Draws:
  """The parameters' keys and bits, gathered: `fold_in(root, d)` for every constant `d`, and
  `random_bits(fold_in(root, d), shape)` for every draw, in the order the program makes them."""

  def __init__(self, folds: Sequence[int], bits: Sequence[tuple[int, tuple[int, ...]]]):
    self.folds = list(folds)
    self.bits = list(bits)
    self.keys = None      # set by `for_key`; None while planning
    self.drawn = iter(())

  @classmethod
  def plan(cls, jaxpr: jex_core.Jaxpr, impl: Any) -> Optional["_Draws"]:
    """What `jaxpr` (of one key) draws; None where gathering would not give the same bits."""
    if str(impl) != "threefry2x32" or not jax.config.jax_threefry_partitionable:
      return None
    plan = cls([], [])
    _evaluate(jaxpr, None, None, [_ROOT], plan)
    plan.folds = list(dict.fromkeys(plan.folds))
    return plan if plan.folds else None

  # While planning (no values), `_evaluate` reports what it would gather.
  def fold(self, data: int) -> Any:
    if self.keys is None:
      self.folds.append(data)
      return None
    return self.keys[self._fold_index[data]]

  def random_bits(self, data: int, shape: tuple[int, ...]) -> Any:
    if self.keys is None:
      self.bits.append((data, shape))
      return None
    return next(self.drawn)

  def for_key(self, key: jax.Array) -> "_Draws":
    """The draws' values for `key`, computed with two hashes."""
    draws = _Draws(self.folds, self.bits)
    draws._fold_index = {data: i for i, data in enumerate(self.folds)}
    draws.keys = jax.vmap(jax.random.fold_in, (None, 0))(key, np.asarray(self.folds, np.uint32))
    if self.bits:
      index = np.asarray([draws._fold_index[d] for d, _ in self.bits])
      sizes = np.asarray([int(np.prod(shape)) for _, shape in self.bits])
      key_data = jax.random.key_data(draws.keys)[index]               # (draws, 2)
      offsets = np.concatenate([[0], np.cumsum(sizes)])
      # Element e of the gathered draw belongs to draw `owner[e]`; its counter is its flat index in
      # that draw's own array (what random_bits hashes). The barrier keeps XLA from evaluating
      # these index arrays at compile time (slow for millions of elements).
      position = jax.lax.optimization_barrier(jax.lax.iota(jnp.int32, int(offsets[-1])))
      owner = jnp.searchsorted(offsets[1:-1].astype(np.int32), position, side="right")
      counts = (position - jnp.asarray(offsets[:-1], jnp.int32)[owner]).astype(jnp.uint32)
      hi, lo = threefry2x32_p.bind(key_data[owner, 0], key_data[owner, 1], jnp.zeros_like(counts),
                                   counts)
      bits = hi ^ lo
      draws.drawn = iter([bits[offsets[i]:offsets[i + 1]].reshape(shape)
                          for i, (_, shape) in enumerate(self.bits)])
    return draws


def _evaluate(jaxpr: jex_core.Jaxpr, consts: Optional[Sequence[Any]], args: Optional[Sequence[Any]],
              symbols: Sequence[Any], draws: Optional[_Draws]) -> tuple[list[Any], list[Any]]:
  """Evaluates `jaxpr` (inlining nested jits), replacing the parameters' `fold_in`s and
  `random_bits` with `draws`' (None: none replaced). Without `args`, only plans: nothing is
  computed, `draws` records.
  Returns the outputs' values and symbols."""
  planning = args is None
  env, symbol = {}, {}
  if not planning:
    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
  symbol.update(zip(jaxpr.invars, symbols))
  read = lambda v: v.val if isinstance(v, jex_core.Literal) else env.get(v)
  read_symbol = lambda v: None if isinstance(v, jex_core.Literal) else symbol.get(v)
  for eqn in _live_equations(jaxpr):
    ins, in_symbols = [read(v) for v in eqn.invars], [read_symbol(v) for v in eqn.invars]
    name = eqn.primitive.name
    out_symbols = [None] * len(eqn.outvars)
    if (draws is not None and name == "random_fold_in" and in_symbols[0] == _ROOT
        and isinstance(eqn.invars[1], jex_core.Literal)):
      data = int(eqn.invars[1].val)
      out_symbols, outs = [("fold", data)], [draws.fold(data)]
    elif (draws is not None and name == "random_bits" and isinstance(in_symbols[0], tuple)
          and eqn.params["bit_width"] == 32):
      outs = [draws.random_bits(in_symbols[0][1], tuple(eqn.params["shape"]))]
    elif name in ("jit", "pjit"):
      inner = eqn.params["jaxpr"]
      outs, out_symbols = _evaluate(inner.jaxpr, inner.consts, None if planning else ins,
                                    in_symbols, draws)
    elif planning:
      outs = [None] * len(eqn.outvars)
    else:
      with eqn.ctx.manager:   # as jax.core.eval_jaxpr binds an equation
        outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
      outs = outs if eqn.primitive.multiple_results else [outs]
    env.update(zip(eqn.outvars, outs))
    symbol.update(zip(eqn.outvars, out_symbols))
  return [read(v) for v in jaxpr.outvars], [read_symbol(v) for v in jaxpr.outvars]


def _live_equations(jaxpr: jex_core.Jaxpr) -> list[Any]:
  """`jaxpr`'s equations that its outputs need (`model.init`'s forward pass is not needed: only the
  variables it creates are returned), in order."""
  needed = {v for v in jaxpr.outvars if not isinstance(v, jex_core.Literal)}
  live = []
  for eqn in reversed(jaxpr.eqns):
    if eqn.effects or any(v in needed for v in eqn.outvars):
      live.append(eqn)
      needed.update(v for v in eqn.invars if not isinstance(v, jex_core.Literal))
  return live[::-1]
