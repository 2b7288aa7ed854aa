"""Measurement tools, not part of the library: the speed benchmark and its memory settings.

    python -m mobilenet_jax.tools.benchmark --help
"""
