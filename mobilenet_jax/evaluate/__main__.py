"""`python -m mobilenet_jax.evaluate --help`; see `mobilenet_jax.evaluate.cli` (the package checks its
extras first: `mobilenet_jax.extras.require_when_run`)."""

import sys

from mobilenet_jax.evaluate.cli import main

if __name__ == "__main__":
  sys.exit(main())
