"""One set of defaults: `make`, `.venv/bin/rlhf` and the tests all read the settings object's.

A model prepared by `make model` must be found by `rlhf ...` run by hand from the checkout, so
neither the Makefile nor the tests' set-up may give an `RLHF_*` setting a default of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The folders a command run from the checkout reads and writes, resolved as the service resolves them.
PRINT_FOLDERS = ("from rlhf.settings import Settings; s = Settings(); "
                 "print(s.cache_dir.expanduser().resolve(), s.data_dir.resolve(), s.adapter_dir.resolve())")


def clean_env() -> dict[str, str]:
    """This environment without RLHF_* settings, and without make's own variables (pytest may run under make)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("RLHF_") and k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}


def run(*cmd: str) -> str:
    r = subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def folders_by_rlhf() -> str:
    return run(sys.executable, "-c", PRINT_FOLDERS)


def test_make_recipes_see_the_same_folders_as_rlhf():
    """A target evaluated inside the Makefile: its recipe gets whatever the Makefile exports."""
    under_make = run("make", "-s", "--no-print-directory",
                     "--eval", f'print-folders: ; @{sys.executable} -c "{PRINT_FOLDERS}"', "print-folders")
    assert under_make == folders_by_rlhf()


def test_make_recipes_set_no_settings():
    recipes = run("make", "-n", "--no-print-directory", "model", "tiny", "up", "serve", "test", "bench")
    assert "RLHF_" not in recipes


def test_the_tests_see_the_same_folders_as_rlhf():
    """The tests' set-up (tests/conftest.py) must not point the model cache elsewhere."""
    under_tests = run(sys.executable, "-c", f"import tests.conftest; {PRINT_FOLDERS}")
    assert under_tests == folders_by_rlhf()
