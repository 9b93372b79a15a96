"""The project around the package: test ids that pytest-xdist can share between its
workers, and install advice that names extras which exist."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _collected(hash_seed):
    # A clean environment for the inner run: no xdist worker or current-test variables
    # inherited from this one.
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTEST_XDIST", "PYTEST_CURRENT_TEST"))}
    env["PYTHONHASHSEED"] = str(hash_seed)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_test_ids_do_not_depend_on_the_hash_seed():
    # pytest-xdist refuses to run ("Different tests were collected between gw0 and
    # gw1") when its workers, each with its own hash seed, name the tests differently:
    # an id built from a set's repr (skorch nets print one) did.
    first, second = _collected(1), _collected(2)
    assert first, "no tests collected"
    assert first == second, sorted(set(first) ^ set(second))[:4]


# Install advice in the package's messages and in the documentation:
# `sklearn-puma[plot]`, `".[tests]"`, "the ``skorch`` extra".
ADVICE = [re.compile(r"sklearn-puma\[([\w,\- ]+)\]"), re.compile(r"\"\.\[([\w,\- ]+)\]\""),
          re.compile(r"the ``([\w-]+)`` extra")]


def _advised_extras():
    files = [*(ROOT / "sklearn_puma").rglob("*.py"), *(ROOT / "examples").glob("*.py"),
             *(ROOT / "benchmarks").glob("*"), *(ROOT / "tests").glob("*.py"),
             *ROOT.glob("*.rst"), *(ROOT / ".ci").glob("*")]
    files += [p for p in (ROOT / "doc").rglob("*.rst") if "_build" not in p.parts]
    advised = {}
    for path in files:
        if not path.is_file() or path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for pattern in ADVICE:
            for match in pattern.finditer(text):
                for extra in match.group(1).split(","):
                    advised.setdefault(extra.strip(), set()).add(str(path.relative_to(ROOT)))
    return advised


def test_advised_extras_exist():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(ROOT / "pyproject.toml", "rb") as f:
        extras = set(tomllib.load(f)["project"]["optional-dependencies"])
    advised = _advised_extras()
    assert "tests" in advised, "the scan no longer finds the README's install command"
    missing = {extra: sorted(paths) for extra, paths in advised.items()
               if extra not in extras}
    assert not missing, f"advised extras missing from pyproject.toml: {missing}"


def _public_names():
    import importlib
    import inspect

    names = []
    for module in ("sklearn_puma", "sklearn_puma.valuation", "sklearn_puma.unlearning",
                   "sklearn_puma.plot", "sklearn_puma.metrics"):
        mod = importlib.import_module(module)
        public = getattr(mod, "__all__", None)
        if public is None:  # metrics: its functions
            public = [name for name, obj in vars(mod).items()
                      if not name.startswith("_") and inspect.isfunction(obj)
                      and obj.__module__ == module]
        names += [(module, name) for name in public]
    return names


def test_every_public_name_has_an_api_page():
    # doc/api.rst lists each public name in an autosummary table under its module's
    # `.. currentmodule::`; a name added to an __all__ must get a page there too.
    listed, module = set(), None
    for line in (ROOT / "doc" / "api.rst").read_text(encoding="utf-8").splitlines():
        if line.startswith(".. currentmodule::"):
            module = line.split("::")[1].strip()
        elif line.startswith("   ") and line.strip().isidentifier():
            listed.add((module, line.strip()))
    missing = sorted(set(_public_names()) - listed)
    assert not missing, f"public names without an API page in doc/api.rst: {missing}"
