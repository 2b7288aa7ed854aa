"""`init_variables`: a network's initial variables from one small, quickly compiled program.

`model.init` draws every parameter with its own Threefry hash: Flax derives each parameter's key with
`random.fold_in(key, hash(path))` and each initializer draws `random_bits(key, shape)`, then turns the
bits into its distribution (uniform -> normal -> scaled by the parameter's own standard deviation).
On XLA:CPU each parameter's hash and each parameter's chain of elementwise operations is compiled on
its own (a loop and its fusions), and every output array costs a kernel: 5-10 s for a MobileNet's ~60
drawn and ~100 constant parameters, for a program that runs once.

`trace_init` traces `model.init` once and evaluates the traced program vectorised:
- the hashes are gathered into two: one vectorised `fold_in` for all the parameters' keys, and one
  `random_bits` over all their elements. JAX's partitionable Threefry (`jax_threefry_partitionable`,
  on by default) makes each element's bits a function of its key and its flat index only, so every
  parameter gets the very bits `model.init` gives it;
- every parameter's chain from bits to value is recorded instead of evaluated, and the chains that
  perform the same operations (all the He-normal kernels, say) are evaluated once over all their
  elements, each parameter's own constants (its standard deviation) given per element. Elementwise
  IEEE arithmetic gives each element the value it has in its own chain;
- arrays filled with one value (BatchNorm's ones and zeros, biases, an optimizer's zeros) leave the
  program as that value and are filled on the host;
so the program has a handful of outputs and kernels, and the parameters are split from them on the
host. Anything else (another PRNG, keys not derived this way, operations other than elementwise ones)
is evaluated as traced. `tests/test_initialization.py` checks the values to the bit against
`jax.jit(model.init)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.extend import core as jex_core
from jax.extend.random import threefry2x32_p


_ROOT = "root"  # the symbol of the program's key
_FROM_KEY = "from key"  # the symbol of other values computed from it

# Operations applied element by element, whose value at an element depends only on the operands'
# values at that element: a drawn parameter's chain from bits to value is made of these.
_ELEMENTWISE = frozenset({
    "abs", "add", "and", "bitcast_convert_type", "ceil", "clamp", "convert_element_type", "cos",
    "div", "erf", "erf_inv", "erfc", "exp", "exp2", "expm1", "floor", "integer_pow", "log", "log1p",
    "logistic", "max", "min", "mul", "neg", "nextafter", "not", "or", "pow", "round", "rsqrt",
    "shift_left", "shift_right_arithmetic", "shift_right_logical", "sign", "sin", "sqrt", "square",
    "sub", "tanh", "xor"})
_SAME_VALUES = frozenset({"copy", "copy_p", "reshape"})   # reshape: row-major, no `dimensions`


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
  return trace_init(init, key)()


def trace_init(init: Callable[[jax.Array], Any], key: jax.Array, *,
               out_shardings: Optional[jax.sharding.Sharding] = None) -> "TracedInit":
  """`init(key)` (any function of one key: a model's `init`, a train state's) traced once into a
  vectorised program; calling the result gives what `jax.jit(init, out_shardings=...)(key)` gives.
  `out_shardings`: one sharding for every output (None: the default device)."""
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)   # a raw uint32[2] key (jax.random.PRNGKey): the same bits
  closed, out_shape = jax.make_jaxpr(init, return_shape=True)(key)
  treedef = jax.tree.structure(out_shape)
  out_info = [jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=out_shardings,
                                   weak_type=getattr(s, "weak_type", False))
              for s in jax.tree.leaves(out_shape)]
  plan = _Draws.plan(closed.jaxpr, jax.random.key_impl(key), out_info, out_shardings)
  layout = _Layout.plan(plan, out_info, out_shardings)

  def program():
    draws = plan and plan.for_key(key)
    outs, _ = _evaluate(closed.jaxpr, closed.consts, [key], [_ROOT], draws)
    return layout.program_outputs(outs, draws)

  traced = jax.jit(program, out_shardings=layout.program_shardings).trace()
  return TracedInit(traced, layout, treedef, out_info)


class TracedInit:
  """A traced initialisation: `out_info` (shapes, dtypes and shardings of what it returns), and a
  call that compiles and runs it (with XLA's options for programs that run once)."""

  def __init__(self, traced: jax.stages.Traced, layout: "_Layout", treedef: Any,
               out_info: Sequence[jax.ShapeDtypeStruct]):
    self._traced, self._layout, self._treedef = traced, layout, treedef
    self.out_info = jax.tree.unflatten(treedef, list(out_info))

  def lower(self) -> jax.stages.Lowered:
    """The vectorised program, lowered (its outputs are the layout's, not `out_info`'s)."""
    return self._traced.lower()

  def __call__(self) -> Any:
    from mobilenet_jax.compute import run_once_compiler_options  # not at import

    compiled = self.lower().compile(run_once_compiler_options())
    return jax.tree.unflatten(self._treedef, self._layout.assemble(compiled()))


@dataclasses.dataclass(frozen=True)
class _Chain:
  """A drawn array not yet evaluated: draw `draw`'s bits through `steps`, then shaped `shape`.
  `steps` (what chains must share to be evaluated together): per operation, its primitive, its
  parameters, the chain's operand position and the number of operands; `constants`: per
  operation, its other operands (values of one element each; None while planning)."""
  draw: int
  shape: tuple[int, ...]
  steps: tuple[Any, ...] = ()
  constants: tuple[Any, ...] = ()

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class _Fill:
  """An array filled with one value (`broadcast_in_dim` of a one-element operand), not yet built."""
  value: Any
  shape: tuple[int, ...]


class _Draws:
  """The parameters' keys and bits, gathered: `fold_in(root, d)` for every constant `d`, and
  `random_bits(fold_in(root, d), shape)` for every draw, ordered so that the draws of each group of
  chains evaluated together are contiguous."""

  def __init__(self, folds: Sequence[int], bits: Sequence[tuple[int, tuple[int, ...]]],
               order: Sequence[int] = ()):
    self.folds = list(folds)
    self.bits = list(bits)
    self.order = list(order) or list(range(len(self.bits)))  # draw indices in the gathered array
    self.keys = None      # set by `for_key`; None while planning

  @classmethod
  def plan(cls, jaxpr: jex_core.Jaxpr, impl: Any, out_info: Sequence[jax.ShapeDtypeStruct],
           out_shardings: Any) -> Optional["_Draws"]:
    """What `jaxpr` (of one key) draws; None where gathering would not give the same bits."""
    if str(impl) != "threefry2x32" or not jax.config.jax_threefry_partitionable:
      return None
    plan = cls([], [])
    plan.outputs, _ = _evaluate(jaxpr, [None] * len(jaxpr.constvars), [None], [_ROOT], plan)
    plan.folds = list(dict.fromkeys(plan.folds))
    if not plan.folds:
      return None
    plan.groups = _group_chains(plan.outputs, out_info, out_shardings)
    grouped = [c.draw for group in plan.groups for c in group]
    plan.order = grouped + [d for d in range(len(plan.bits)) if d not in set(grouped)]
    return plan

  # While planning (no values), `_evaluate` reports what it would gather.
  def fold(self, data: int) -> Any:
    if self.keys is None:
      self.folds.append(data)
      return None
    return self.keys[self._fold_index[data]]

  def random_bits(self, data: int, shape: tuple[int, ...]) -> int:
    """The draw's index (its bits: `flat_bits`)."""
    if self.keys is None:
      self.bits.append((data, shape))
      return len(self.bits) - 1
    self._drawn += 1
    return self._drawn - 1

  def for_key(self, key: jax.Array) -> "_Draws":
    """The draws' values for `key`, computed with two hashes."""
    draws = _Draws(self.folds, self.bits, self.order)
    draws.groups, draws._drawn = self.groups, 0
    draws._fold_index = {data: i for i, data in enumerate(self.folds)}
    draws.keys = jax.vmap(jax.random.fold_in, (None, 0))(key, np.asarray(self.folds, np.uint32))
    if not self.bits:
      return draws
    sizes = np.asarray([int(np.prod(self.bits[d][1])) for d in self.order], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    draws.start = {d: int(offsets[i]) for i, d in enumerate(self.order)}
    draws.position = {d: i for i, d in enumerate(self.order)}
    index = np.asarray([draws._fold_index[self.bits[d][0]] for d in self.order])
    key_data = jax.random.key_data(draws.keys)[index]               # (draws, 2)
    # Element e of the gathered draw belongs to draw `owner[e]` (its position in `order`): the number
    # of draws that end at or before e, a prefix sum of ones at the draws' ends (one pass, faster
    # than a binary search per element). Its counter is its flat index in that draw's own
    # array (what random_bits hashes). The barriers keep XLA from evaluating these index arrays at
    # compile time (slow for millions of elements).
    total = int(offsets[-1])
    position = jax.lax.optimization_barrier(jax.lax.iota(jnp.int32, total))
    ends = jax.lax.optimization_barrier(jnp.zeros(total, jnp.int32)).at[offsets[1:-1]].add(1)
    draws.owner = jnp.cumsum(ends)
    counts = (position - jnp.asarray(offsets[:-1], jnp.int32)[draws.owner]).astype(jnp.uint32)
    hi, lo = threefry2x32_p.bind(key_data[draws.owner, 0], key_data[draws.owner, 1],
                                 jnp.zeros_like(counts), counts)
    draws.all_bits = hi ^ lo
    return draws

  def flat_bits(self, draw: int) -> jax.Array:
    start = self.start[draw]
    return self.all_bits[start:start + int(np.prod(self.bits[draw][1]))]

  def evaluate_group(self, chains: Sequence[_Chain]) -> jax.Array:
    """The chains (one group: the same steps, contiguous draws) evaluated together over all their
    elements, flat; each chain's constants given to its own elements."""
    first, last = chains[0].draw, chains[-1].draw
    start, stop = self.start[first], self.start[last] + chains[-1].size
    owner = self.owner[start:stop] - self.position[first]   # each element's chain in `chains`

    def operand(step: int, j: int) -> Any:
      values = [c.constants[step][j] for c in chains]
      if all(not isinstance(v, jax.core.Tracer) and np.array_equal(v, values[0]) for v in values):
        return _one_value(values[0])
      dtype = jnp.result_type(values[0])
      return jnp.stack([jnp.asarray(_one_value(v), dtype) for v in values])[owner]

    return _apply(chains[0].steps, self.all_bits[start:stop], operand)


def _group_chains(outputs: Sequence[Any], out_info: Sequence[jax.ShapeDtypeStruct],
                  out_shardings: Any) -> list[list[_Chain]]:
  """The outputs' chains grouped by their steps (each draw in one group; a draw reaching the
  outputs through different steps is evaluated as traced the second time)."""
  if not _splits_on_host(out_shardings):
    return []
  groups: dict[Any, list[_Chain]] = {}
  seen = set()
  for value, info in zip(outputs, out_info):
    if isinstance(value, _Chain) and not info.weak_type and value.draw not in seen:
      seen.add(value.draw)
      groups.setdefault(value.steps, []).append(value)
  return list(groups.values())


class _Layout:
  """Which program output gives which of `init`'s outputs: traced outputs, one flat array per group
  of chains (split on the host), one vector of fill values per dtype (filled on the host)."""

  def __init__(self, kinds: list[Any], groups: list[list[_Chain]], fill_dtypes: list[Any],
               out_info: Sequence[jax.ShapeDtypeStruct], out_shardings: Any):
    self.kinds, self.groups, self.fill_dtypes = kinds, groups, fill_dtypes
    self.out_info = list(out_info)
    traced = [s.sharding for s, kind in zip(out_info, kinds) if kind[0] == "traced"]
    extra = _replicated(out_shardings) if out_shardings is not None else None
    self.program_shardings = (None if out_shardings is None else
                              (traced, [extra] * len(groups), [extra] * len(fill_dtypes)))

  @classmethod
  def plan(cls, draws: Optional[_Draws], out_info: Sequence[jax.ShapeDtypeStruct],
           out_shardings: Any) -> "_Layout":
    groups = draws.groups if draws else []
    member = {c.draw: (g, i) for g, group in enumerate(groups) for i, c in enumerate(group)}
    outputs = draws.outputs if draws else [None] * len(out_info)
    vectorise = _splits_on_host(out_shardings)
    kinds, fill_dtypes = [], []
    for value, info in zip(outputs, out_info):
      if (isinstance(value, _Chain) and value.draw in member
          and groups[member[value.draw][0]][member[value.draw][1]].steps == value.steps):
        kinds.append(("chain",) + member[value.draw])
      elif isinstance(value, _Fill) and vectorise and not info.weak_type:
        dtype = np.dtype(info.dtype)
        if dtype not in fill_dtypes:
          fill_dtypes.append(dtype)
        kinds.append(("fill", fill_dtypes.index(dtype),
                      sum(k[:2] == ("fill", fill_dtypes.index(dtype)) for k in kinds)))
      else:
        kinds.append(("traced",))
    return cls(kinds, groups, fill_dtypes, out_info, out_shardings)

  def program_outputs(self, outs: Sequence[Any], draws: Optional[_Draws]) -> Any:
    """(traced outputs, each group's flat values, each dtype's fill values), inside the program."""
    traced = [_materialize(v, draws) for v, kind in zip(outs, self.kinds) if kind[0] == "traced"]
    chains = [[None] * len(group) for group in self.groups]
    fills = [[] for _ in self.fill_dtypes]
    for value, kind in zip(outs, self.kinds):
      if kind[0] == "chain":
        chains[kind[1]][kind[2]] = value
      elif kind[0] == "fill":
        fills[kind[1]].append(_one_value(value.value))
    groups = [draws.evaluate_group(group) for group in chains]
    fills = [jnp.stack([jnp.asarray(v, dtype) for v in values])
             for values, dtype in zip(fills, self.fill_dtypes)]
    return traced, groups, fills

  def assemble(self, program_outputs: Any) -> list[Any]:
    """`init`'s outputs from the program's: chains split from their group's flat array and fills
    filled, on the host, then placed as `out_info` says."""
    traced, groups, fills = program_outputs
    traced = iter(traced)
    groups = [_to_host(g) for g in groups]
    starts = [np.concatenate([[0], np.cumsum([c.size for c in group])]) for group in self.groups]
    fills = [_to_host(f) for f in fills]
    outs = []
    for kind, info in zip(self.kinds, self.out_info):
      if kind[0] == "traced":
        outs.append(next(traced))
        continue
      if kind[0] == "chain":
        _, g, i = kind
        host = groups[g][starts[g][i]:starts[g][i + 1]].reshape(info.shape)
      else:
        host = np.full(info.shape, fills[kind[1]][kind[2]], np.dtype(info.dtype))
      outs.append(_place(host, info.sharding))
    return outs


def _evaluate(jaxpr: jex_core.Jaxpr, consts: Optional[Sequence[Any]], args: Optional[Sequence[Any]],
              symbols: Sequence[Any], draws: Optional[_Draws]) -> tuple[list[Any], list[Any]]:
  """Evaluates `jaxpr` (inlining nested jits), replacing the parameters' `fold_in`s and
  `random_bits` with `draws`' (None: none replaced); drawn arrays become `_Chain`s and filled
  arrays `_Fill`s until an operation other than an elementwise one needs their values. While
  `draws` plans (has no keys), nothing is computed (values are None) and `draws` records.
  Returns the outputs' values and symbols."""
  planning = draws is not None and draws.keys is None
  env, symbol = {}, {}
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
      shape = tuple(eqn.params["shape"])
      outs = [_Chain(draws.random_bits(in_symbols[0][1], shape), shape)]
    elif name in ("jit", "pjit"):
      inner = eqn.params["jaxpr"]
      outs, out_symbols = _evaluate(inner.jaxpr, inner.consts, ins, in_symbols, draws)
    elif draws is not None and (deferred := _defer(eqn, ins, in_symbols)) is not None:
      outs = [deferred]
    elif planning:
      outs = [None] * len(eqn.outvars)
    else:
      ins = [_materialize(x, draws) for x in ins]
      with eqn.ctx.manager:   # as jax.core.eval_jaxpr binds an equation
        outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
      outs = outs if eqn.primitive.multiple_results else [outs]
    if all(s is None for s in out_symbols) and any(s is not None for s in in_symbols):
      out_symbols = [_FROM_KEY] * len(eqn.outvars)
    env.update(zip(eqn.outvars, outs))
    symbol.update(zip(eqn.outvars, out_symbols))
  return [read(v) for v in jaxpr.outvars], [read_symbol(v) for v in jaxpr.outvars]


def _defer(eqn: Any, ins: Sequence[Any], symbols: Sequence[Any]) -> Optional[Any]:
  """The equation's result as a `_Chain` or `_Fill` where it continues one; else None. A chain's
  other operands must be constants of one element (not computed from the key)."""
  name, out = eqn.primitive.name, eqn.outvars[0].aval
  chains = [i for i, x in enumerate(ins) if isinstance(x, _Chain)]
  if name in _SAME_VALUES and len(ins) == 1 and isinstance(ins[0], (_Chain, _Fill)):
    if eqn.params.get("dimensions") is not None or eqn.params.get("sharding") is not None:
      return None
    return dataclasses.replace(ins[0], shape=tuple(out.shape))
  if name in _ELEMENTWISE and len(chains) == 1 and len(eqn.outvars) == 1:
    chain = ins[chains[0]]
    if tuple(out.shape) != tuple(eqn.invars[chains[0]].aval.shape):
      return None
    others = [j for j in range(len(ins)) if j != chains[0]]
    if not all((isinstance(ins[j], _Fill) or _size(eqn.invars[j].aval) == 1)
               and symbols[j] is None for j in others):
      return None
    params = tuple(sorted(eqn.params.items()))
    if not _hashable(params):
      return None
    step = (eqn.primitive, params, chains[0], len(ins))
    constants = tuple(ins[j].value if isinstance(ins[j], _Fill) else ins[j] if j != chains[0]
                      else None for j in range(len(ins)))
    if name == "mul" and chain.steps and chain.steps[-1][0].name == "mul":
      # XLA's algebraic simplifier folds (A * C1) * C2 into A * (C1 * C2) (a variance-scaling
      # normal draw: sqrt(2) * erf_inv(u), then * stddev); so does the chain, for the same values.
      other = 1 - chain.steps[-1][2]
      previous, constant = chain.constants[-1][other], constants[1 - chains[0]]
      product = None if constant is None else jax.lax.mul(_one_value(previous), _one_value(constant))
      merged = tuple(product if j == other else None for j in range(2))
      return dataclasses.replace(chain, constants=chain.constants[:-1] + (merged,))
    return dataclasses.replace(chain, steps=chain.steps + (step,),
                               constants=chain.constants + (constants,))
  if (name == "broadcast_in_dim" and not chains and not isinstance(ins[0], _Fill)
      and _size(eqn.invars[0].aval) == 1 and _size(out) > 1):
    return _Fill(ins[0], tuple(out.shape))
  return None


def _materialize(value: Any, draws: Optional[_Draws]) -> Any:
  """A deferred array's values (as traced: its own chain, or its broadcast)."""
  if isinstance(value, _Chain):
    if draws.keys is None:   # planning
      return None
    own = lambda step, j: _one_value(value.constants[step][j])
    return _apply(value.steps, draws.flat_bits(value.draw), own).reshape(value.shape)
  if isinstance(value, _Fill):
    return None if value.value is None else jax.lax.broadcast(_one_value(value.value), value.shape)
  return value


def _apply(steps: Sequence[Any], x: jax.Array, operand: Callable[[int, int], Any]) -> jax.Array:
  """The chain's operations on the flat array `x`; `operand(step, j)`: the other operands."""
  for s, (primitive, params, position, arity) in enumerate(steps):
    operands = [x if j == position else operand(s, j) for j in range(arity)]
    x = primitive.bind(*operands, **primitive.get_bind_params(dict(params)))
  return x


def _one_value(x: Any) -> Any:
  """A one-element operand as a scalar."""
  return x if np.shape(x) == () else jnp.reshape(x, ())


def _size(aval: Any) -> int:
  return int(np.prod(aval.shape, dtype=np.int64))


def _hashable(value: Any) -> bool:
  try:
    hash(value)
    return True
  except TypeError:
    return False


def _splits_on_host(out_shardings: Any) -> bool:
  """Whether outputs may leave the program flat, to be split or filled on the host: on the default
  device, or replicated over a mesh (`_replicated`)."""
  return out_shardings is None or _replicated(out_shardings) is not None


def _replicated(sharding: Any) -> Optional[jax.sharding.Sharding]:
  """`sharding`'s mesh, fully replicated (where the flat outputs go); None for other shardings."""
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  if isinstance(sharding, jax.sharding.SingleDeviceSharding):
    return sharding
  return None


def _to_host(x: jax.Array) -> np.ndarray:
  """A replicated array's values (this process's copy)."""
  return np.asarray(x if x.is_fully_addressable else x.addressable_data(0))


def _place(host: np.ndarray, sharding: Optional[jax.sharding.Sharding]) -> jax.Array:
  if sharding is None:
    return jax.device_put(host)
  if sharding.is_fully_addressable:
    return jax.device_put(host, sharding)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


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
