"""Loading the repository's scripts (examples/, benchmarks/: folders, not packages) as modules in tests, and
whether a process has stopped."""

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(path: str, name: str):
    """The script at ``path`` (relative to the repository) as module ``name``, registered in sys.modules
    (dataclasses look their module up while a class is built)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_example(name: str):
    """``examples/{name}.py`` as a module."""
    return load_script(os.path.join("examples", f"{name}.py"), f"example_{name}")


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has stopped (Linux: reads /proc). A zombie has stopped, whether or not its parent
    (or, once that is gone, init) has reaped it yet."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" in f.read()
    except FileNotFoundError:
        return True
