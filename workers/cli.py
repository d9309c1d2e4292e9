"""Full ``sdpo`` console entry point: the algorithm commands of ``sdpo.cli`` plus service commands.

Lives in ``workers`` because it is the one package allowed to import both ``sdpo`` and ``backend``.
"""

from __future__ import annotations

from sdpo.cli import app


def main() -> None:  # pragma: no cover - console entry
    app()
