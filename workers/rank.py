"""One rank of a multi-GPU training job, started by the worker as
``torchrun --nproc_per_node=N -m workers.rank JOB_ID CONFIG_JSON`` (through ``workers.lifeline``).

Every rank runs ``sdpo.trainer.train`` on the same config (the trainer shards questions over ranks and
reduces); progress callbacks fire on rank 0 and commit to the database like a single-process job, as the
worker that owns the job (``SDPO_JOB_OWNER``): a write after the job stopped being that worker's is refused.
Before every step every rank checks the job's cancel flag *and* that the job still runs under its worker
(``DbCallbacks.should_stop``); the trainer all-reduces the answer, so all ranks stop together. Each rank dies
with torchrun (parent-death signal) and exits when the worker process (``SDPO_WORKER_PID``) is gone; the
worker keeps the job's heartbeat and kills torchrun if the job stops being its own.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from backend.errors import NotRecorded
from backend.settings import get_settings
from workers.engine import build_train_config
from workers.lifeline import set_parent_death_signal, watch_pid
from workers.runner import DbCallbacks, WorkerContext, _result_dict


def main(argv: list[str]) -> int:
    set_parent_death_signal()  # die with torchrun
    if os.environ.get("SDPO_WORKER_PID"):
        watch_pid(int(os.environ["SDPO_WORKER_PID"]))  # and with the worker
    owner = os.environ.get("SDPO_JOB_OWNER")
    if not owner:
        print("workers.rank: SDPO_JOB_OWNER (the id of the worker that owns the job) is not set", file=sys.stderr)
        return 2
    job_id, config_path = int(argv[0]), Path(argv[1])
    from sdpo.trainer import train  # after the death signals: importing the trainer (torch) takes seconds

    ctx = WorkerContext.from_settings(get_settings(), detect_gpus=False)
    cfg = build_train_config(json.loads(config_path.read_text()))
    try:
        result = train(cfg, DbCallbacks(ctx, job_id, None, owner=owner).as_callbacks())
    except NotRecorded as e:  # the worker fails the job with this one line (workers.runner.run_train_ranks)
        (config_path.parent / "not_recorded.json").write_text(json.dumps({"what": e.what, "reason": e.reason}))
        raise
    if int(os.environ.get("RANK", "0")) == 0:
        (config_path.parent / "result.json").write_text(json.dumps(_result_dict(result)))
    return 0


if __name__ == "__main__":  # pragma: no cover - torchrun entry
    sys.exit(main(sys.argv[1:]))
