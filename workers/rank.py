"""One rank of a multi-GPU training job, started by the worker as
``torchrun --nproc_per_node=N -m workers.rank JOB_ID CONFIG_JSON``.

Every rank runs ``sdpo.trainer.train`` on the same config (the trainer shards questions over ranks and
reduces); progress callbacks fire on rank 0 and commit to the database like a single-process job; every rank
reads the job's cancel flag (the trainer all-reduces it so all ranks stop together). The parent worker keeps
the job's heartbeat and kills the process group if the job stops being its own.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from backend.settings import get_settings
from workers.engine import build_train_config
from workers.runner import DbCallbacks, WorkerContext, _result_dict


def main(argv: list[str]) -> int:
    job_id, config_path = int(argv[0]), Path(argv[1])
    from sdpo.trainer import train

    ctx = WorkerContext.from_settings(get_settings())
    cfg = build_train_config(json.loads(config_path.read_text()))
    result = train(cfg, DbCallbacks(ctx, job_id, None).as_callbacks())
    if int(os.environ.get("RANK", "0")) == 0:
        (config_path.parent / "result.json").write_text(json.dumps(_result_dict(result)))
    return 0


if __name__ == "__main__":  # pragma: no cover - torchrun entry
    sys.exit(main(sys.argv[1:]))
