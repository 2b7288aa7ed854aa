"""Training configs: `get_config(arg)` per variant and recipe (`--config=configs/<file>.py:<arg>`)."""
