"""requirements.lock is what `make install` installs: it must satisfy pyproject.toml, and the environment the
suite runs in (built by `make install`) must be exactly it."""

from __future__ import annotations

import importlib.metadata as md
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _lock() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"requirements.lock: {line!r} is not an exact NAME==VERSION pin"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def _project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # the [gpu] extra (vLLM) is never installed on the CPU machines the lock is made on
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_every_requirement_of_pyproject_is_pinned_within_its_range():
    pins = _lock()
    for req in _project_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is required by pyproject.toml but missing from requirements.lock (make lock)"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]}, outside pyproject.toml's {req} (make lock)")


def test_the_environment_is_the_lock():
    pins = _lock()
    installed = {}
    for dist in md.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name != "sdpo-studio":
            installed[name] = Version(Version(dist.version).base_version) if name == "torch" else Version(dist.version)
    missing = sorted(set(pins) - set(installed))
    extra = sorted(set(installed) - set(pins))
    differ = sorted(f"{n} {installed[n]} (lock {pins[n]})" for n in set(pins) & set(installed) if installed[n] != pins[n])
    assert not (missing or extra or differ), (
        f"the environment differs from requirements.lock: missing {missing}, not in the lock {extra}, "
        f"other versions {differ}; run `make install` (or `make lock` after changing pyproject.toml)")
