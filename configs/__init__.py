"""Training configs: `get_config(arg)` per variant and recipe.

Installed as `mobilenet_jax.configs` (setup.py), so from any directory
`python -m mobilenet_jax.main --config=configs/<file>.py:<arg>` (or `--config=<file>:<arg>`) and
`from mobilenet_jax.configs import default` find them.
"""
