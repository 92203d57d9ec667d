"""Helpers shared by the training tests."""

import importlib


def load_config(name, variant="tiny"):
    """configs/<name>.py's get_config(variant) (the repository root is importable in tests)."""
    return importlib.import_module(f"configs.{name}").get_config(variant)
