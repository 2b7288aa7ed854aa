"""Prints the MobileNet papers' tables next to our parameter and multiply-add counts.

    python experiments/paper_tables.py            # markdown tables (the README shows this output)
    python experiments/paper_tables.py --no-xla   # skip XLA's independent count (faster)

Columns: our trainable params and the reference count (Keras applications, which load the released
checkpoints), our MAdds (papers' convention: convolutions + dense layers, one image), the published
MAdds, their deviation, and XLA's cost analysis of the same forward pass as an independent count.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mobilenet_jax as mj  # noqa: E402
from mobilenet_jax import profile, published  # noqa: E402


def _row(entry: published.Published, xla: bool) -> str:
  model = mj.create_model(entry.model, width_multiplier=entry.width)
  ours = mj.count_madds(model, entry.resolution) / 1e6
  params = mj.count_params(_shapes(model))
  ref = f"{entry.params:,}" if entry.params else "-"
  match = "" if entry.params is None else (" ✓" if params == entry.params else " ✗")
  if entry.madds is None:
    pub, dev, verdict = "-", "-", ""
  else:
    pub, dev = f"{entry.madds:g}", f"{100 * (ours / entry.madds - 1):+.2f}%"
    if abs(ours / entry.madds - 1) <= 0.01:
      verdict = "ok"
    elif entry.consistent(ours):
      verdict = f"ok ({'truncated' if entry.printed == 'floor' else 'rounded'} by the source)"
    else:
      verdict = "see note"
  xla_col = f"{profile.xla_madds(model, entry.resolution) / 1e6:.1f}" if xla else ""
  note = ": ".join(filter(None, (entry.madds_source, entry.discrepancy, entry.note)))
  return (f"| {entry.model} | {entry.width:g} | {entry.resolution} | {params:,}{match} | {ref} | "
          f"{ours:.1f} | {pub} | {dev} {verdict} |" + (f" {xla_col} |" if xla else "") + f" {note} |")


def _shapes(model):
  import jax
  import jax.numpy as jnp
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))


def print_grid(title: str, entries, xla: bool) -> None:
  print(f"\n### {title}\n")
  head = ("| model | alpha | res | params (ours) | params (Keras) | MAdds M (ours) | MAdds M "
          "(published) | deviation |" + (" XLA count M |" if xla else "") + " source / note |")
  print(head)
  print("|" + "---|" * (head.count("|") - 1))
  for entry in entries:
    print(_row(entry, xla))


def print_v1_comparisons() -> None:
  separable = mj.create_model("mobilenet_v1")
  full = mj.create_model("mobilenet_v1_conv")
  print("\n### V1 paper Table 4: depthwise separable vs full convolutions (224, alpha 1)\n")
  print("| model | MAdds M (ours) | MAdds M (paper) | params M (ours) | params M (paper) |")
  print("|---|---|---|---|---|")
  for name, model, ref in (("Conv MobileNet", full, published.V1_FULL_CONVOLUTION),
                           ("MobileNet", separable, published.V1_SEPARABLE)):
    print(f"| {name} | {mj.count_madds(model) / 1e6:.1f} | {ref['madds']} | "
          f"{mj.count_params(_shapes(model)) / 1e6:.2f} | {ref['params_millions']} |")

  costs = profile.layer_costs(separable)
  print("\n### V1 paper Table 2: resource per layer type (224, alpha 1)\n")
  print("| type | MAdds % (ours) | MAdds % (paper) | params % (ours) | params % (paper) |")
  print("|---|---|---|---|---|")
  names = {"conv_1x1": "Conv 1x1", "depthwise": "Conv DW 3x3", "conv_kxk": "Conv 3x3 (first layer)",
           "fc": "Fully connected"}
  for kind, share in profile.breakdown_by_kind(costs).items():
    paper = published.V1_LAYER_TYPES[kind]
    print(f"| {names[kind]} | {share['madds_pct']:.2f} | {paper['madds_pct']:.2f} | "
          f"{share['params_pct']:.2f} | {paper['params_pct']:.2f} |")
  print("\nThe paper's 1.19% for the first convolution is 1.91% with its digits swapped: the other "
        "three shares sum to 98.10% (leaving 1.90%, up to rounding).")

  print("\n### Each depthwise separable layer vs the standard 3x3 convolution it replaces "
        "(V1 eq. 5)\n")
  print("| layer | out channels N | MAdds M separable | MAdds M standard | ratio | 1/N + 1/9 |")
  print("|---|---|---|---|---|---|")
  for s in profile.separable_savings(costs):
    print(f"| {s.path} | {s.out_features} | {s.separable_madds / 1e6:.2f} | "
          f"{s.standard_madds / 1e6:.2f} | {s.ratio:.4f} | {s.paper_ratio:.4f} |")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--no-xla", dest="xla", action="store_false",
                      help="skip XLA's cost analysis (the independent count)")
  args = parser.parse_args(argv)
  print_grid("MobileNetV1: width x resolution (V1 paper Tables 6-7, TF-slim table)",
             published.V1_TABLE, args.xla)
  print_grid("MobileNetV2: width x resolution (TF-slim table)", published.V2_TABLE, args.xla)
  print_grid("MobileNetV3 (V3 paper Table 3, TF-slim README)", published.V3_TABLE, args.xla)
  print_v1_comparisons()


if __name__ == "__main__":
  main()
