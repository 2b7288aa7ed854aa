"""`python -m mobilenet_jax.convert --help`; see `mobilenet_jax.convert.cli`."""

import sys

from mobilenet_jax import extras

if __name__ == "__main__":
  extras.require("python -m mobilenet_jax.convert", "train")
  from mobilenet_jax.convert.cli import main
  sys.exit(main())
