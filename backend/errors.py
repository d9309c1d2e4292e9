"""Errors raised by the services. Each names what is wrong so the UI and CLI can show it as is."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class of every error a service raises on purpose."""


class InvalidInput(ServiceError, ValueError):
    """The caller's input is invalid; ``field`` names it (dotted, e.g. ``self_distillation.alpha``)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class NotFound(ServiceError, LookupError):
    def __init__(self, what: str, key: object):
        self.what = what
        self.key = key
        super().__init__(f"{what} {key!r} not found")


class IllegalTransition(ServiceError):
    """A job status change the state machine does not allow (e.g. succeeded -> running)."""

    def __init__(self, job_id: int, current: str, target: str, allowed: tuple[str, ...]):
        self.job_id, self.current, self.target = job_id, current, target
        allowed_text = ", ".join(allowed) if allowed else "none (terminal state)"
        super().__init__(f"job {job_id}: illegal transition {current} -> {target}; allowed: {allowed_text}")


class EnqueueError(ServiceError):
    """The job was stored but the broker refused it; the job is marked failed with this reason."""


class JobLost(ServiceError):
    """A worker tried to write progress for a job it no longer runs (taken over, re-enqueued, finished or
    deleted); nothing was written and the worker must stop working on it."""

    def __init__(self, job_id: int, worker_id: str):
        self.job_id, self.worker_id = job_id, worker_id
        super().__init__(f"job {job_id} is no longer running under worker {worker_id} (taken over, re-enqueued, "
                         "finished or deleted); nothing was written")


class NotRecorded(ServiceError):
    """A job's progress could not be written to the database (the reason is one line, without SQL or
    framework text); what was committed before stays. The job ends ``failed`` with this message."""

    def __init__(self, what: str, reason: str):
        self.what, self.reason = what, reason
        super().__init__(f"could not record {what} in the database ({reason}); what was recorded before is kept")
