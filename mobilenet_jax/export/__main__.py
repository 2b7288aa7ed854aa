"""`python -m mobilenet_jax.export --help`; see `mobilenet_jax.export.cli`."""

import sys

from mobilenet_jax import extras

if __name__ == "__main__":
  extras.require("python -m mobilenet_jax.export", "train", "export")
  from mobilenet_jax.export.cli import main
  sys.exit(main())
