"""`python -m mobilenet_jax.evaluate --help`; see `mobilenet_jax.evaluate.cli`."""

import sys

from mobilenet_jax import extras

if __name__ == "__main__":
  extras.require("python -m mobilenet_jax.evaluate", "train")
  from mobilenet_jax.evaluate.cli import main
  sys.exit(main())
