"""Fixtures for the weight-format tests.

`core` is the compiled extension metallic_native._core. It is imported through
the package; if the package's own __init__ cannot import yet (parts of the
package are developed on other branches), the extension is loaded directly from
the installed package directory so these tests still test the real kernels.
"""
import importlib.machinery
import importlib.util
import os
import sys

import pytest


def _load_core():
    try:
        from metallic_native import _core
        return _core
    except ImportError:
        spec = importlib.util.find_spec("metallic_native")
        if spec is None or not spec.submodule_search_locations:
            raise
        for d in spec.submodule_search_locations:
            for name in os.listdir(d):
                if name.startswith("_core.") and name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
                    path = os.path.join(d, name)
                    loader = importlib.machinery.ExtensionFileLoader("metallic_native._core", path)
                    s = importlib.util.spec_from_file_location("metallic_native._core", path, loader=loader)
                    mod = importlib.util.module_from_spec(s)
                    loader.exec_module(mod)
                    sys.modules.setdefault("metallic_native._core", mod)
                    return mod
        raise


@pytest.fixture(scope="session")
def core():
    return _load_core()


def simd_isas(core):
    """The SIMD kernel families this build can run here (scalar is always tested separately)."""
    return [isa for isa in ("avx2", "neon") if core.isa_available(isa)]
