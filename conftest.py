"""Loads the parity harness's pytest plugin (options, the `parity` fixture, golden regeneration, reports)."""

pytest_plugins = ["rvc_mlx.testing.plugin", "pytester"]
