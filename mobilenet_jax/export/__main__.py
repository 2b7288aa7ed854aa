"""`python -m mobilenet_jax.export --help`; see `mobilenet_jax.export.cli`."""

import sys

from mobilenet_jax.export.cli import main

if __name__ == "__main__":
  sys.exit(main())
