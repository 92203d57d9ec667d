"""Verification of model steps: the sandboxed code executor and the answer grader.

Importing the package (or any of its modules) starts nothing: worker pools, helper
processes and log filters are created on first use. The public names below are
imported from their modules when first accessed.

  PythonExecutor, ExecResult, REFERENCE_TIMEOUT_S  -- `executor`: run model-written
      programs in the sandbox (threat model in its docstring and the README)
  extract_answer, math_equal, math_equal_any       -- `grader`: final answers and
      mathematical equivalence
"""

import importlib

__all__ = ["PythonExecutor", "ExecResult", "REFERENCE_TIMEOUT_S", "extract_answer",
           "math_equal", "math_equal_any"]
_HOME = {"PythonExecutor": "executor", "ExecResult": "executor",
         "REFERENCE_TIMEOUT_S": "executor", "extract_answer": "grader",
         "math_equal": "grader", "math_equal_any": "grader"}


def __getattr__(name: str):
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
