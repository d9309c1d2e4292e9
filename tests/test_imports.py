"""The architecture's import direction, enforced on the source (AST), not by convention."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "sdpo": {"backend", "app", "workers"},  # sdpo may use sdpo_sandbox (the code environment does)
    "sdpo_sandbox": {"sdpo", "backend", "app", "workers"},  # the sandbox imports nothing of the project
    "backend": {"sdpo", "sdpo_sandbox", "app", "workers"},
    "app": {"sdpo", "sdpo_sandbox", "workers"},
}


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no Python files"
    bad = []
    for f in files:
        hit = imported_top_levels(f) & FORBIDDEN[package]
        if hit:
            bad.append(f"{f.relative_to(ROOT)} imports {sorted(hit)}")
    assert not bad, "import direction violated:\n" + "\n".join(bad)


def test_checker_catches_a_violation(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import os\nfrom backend.models import Job\nimport sdpo.losses as L\n")
    assert imported_top_levels(f) == {"os", "backend", "sdpo"}
