"""`python -m mobilenet_jax.convert --help`; see `mobilenet_jax.convert.cli`."""

import sys

from mobilenet_jax.convert.cli import main

if __name__ == "__main__":
  sys.exit(main())
