"""StableHLO export with `jax.export`: the folded network, weights inside, for XLA or IREE serving.

IREE compiles the MLIR text of a fixed batch only (its StableHLO lowering refuses grouped
convolutions, MobileNet's depthwise layers, of a dynamic batch): `to_stablehlo` writes batch 1 to
".mlir" files unless asked otherwise.
"""

from __future__ import annotations

import jax

from mobilenet_jax.export.program import Program


def program_to_stablehlo(program: Program, text: bool = False) -> bytes:
  """`jax.export.Exported.serialize()` of the program (load with `jax.export.deserialize`), or the
  StableHLO module as MLIR text when `text`. A dynamic batch stays symbolic."""
  exported = jax.export.export(jax.jit(program.function))(program.input_spec)
  if text:
    return exported.mlir_module().encode()
  return bytes(exported.serialize())
