"""What the job-service tests share: a stand-in engine validator and problem parser, a problem, and helpers that
submit a job, make an attempt and silence a job's heartbeat."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from backend.models import Job, utcnow
from backend.schemas import AttemptIn, ParsedProblem
from backend.services import jobs as J


class FieldError(ValueError):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def validate(kind: str, config: dict, **_target) -> dict:
    """A stand-in engine config: budget (int >= 1) and lr (> 0), unknown keys refused."""
    known = {"budget": 4, "lr": 1e-5} if kind == "solve" else {"max_steps": 2, "train_batch_size": 4,
                                                              "sampler": "auto", "distributed": "none"}
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise FieldError(unknown[0], f"unknown key; known keys are {', '.join(known)}")
    cfg = {**known, **config}
    if kind == "solve" and (not isinstance(cfg["budget"], int) or cfg["budget"] < 1):
        raise FieldError("budget", f"got {cfg['budget']!r}; must be an integer >= 1")
    return cfg


def parse(data: dict) -> ParsedProblem:
    tests = data["tests"]
    return ParsedProblem(statement=data["statement"], data=data,
                         n_public_tests=sum(t.get("public", True) for t in tests),
                         n_hidden_tests=sum(not t.get("public", True) for t in tests))


PROBLEM = {"statement": "# Double\nPrint twice the input.", "tests": [
    {"input": "2\n", "output": "4\n"}, {"input": "5\n", "output": "10\n", "public": False}]}


def submit(s, queue, problem_id, **config):
    return J.submit_job(s, kind="solve", config=config, validate=validate, enqueue=queue.enqueue,
                        problem_id=problem_id, model="tiny")


def attempt(r: int, i: int, passed: int = 0) -> AttemptIn:
    return AttemptIn(round=r, index=i, response=f"r{r}i{i}", code="print(1)", reward=passed / 2,
                     passed_public=passed, total_public=2, passed_hidden=0, total_hidden=1,
                     feedback="wrong answer", tokens=10, seconds=0.1)


def silence(s, job_id: int, seconds: float = 100) -> None:
    s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))
