"""Typed records and callbacks the engines (trainer, test-time solver) report through.

The job queue implements these to persist progress and to cancel; the CLI implements them with a progress
bar and files. Every hook is optional.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdpo.credit import TokenCredit


@dataclass
class Attempt:
    """One scored response (a training rollout or a test-time attempt)."""

    round: int
    index: int
    response: str
    code: str | None
    reward: float
    passed: int
    total: int
    feedback: str | None
    tokens: int
    seconds: float
    hidden_passed: int | None = None
    hidden_total: int | None = None
    task_id: str | None = None


@dataclass
class TeacherView:
    """What the self-teacher saw and said about one attempt of an SDPO round (``round``, ``index`` as in its
    ``Attempt``), for showing.

    distilled: the teacher context holds a demonstration or feedback (without either the attempt carries no
        teacher signal and is not distilled). demonstration: index in the round of the sibling whose response
        is the demonstration, or None. feedback: the attempt's own feedback is shown to the teacher.
    context: the teacher's re-prompt message (bounded; "" when not distilled).
    credit: the per-token view (``sdpo.credit.TokenCredit``), or None (not distilled, or the view is off).
    """

    round: int
    index: int
    distilled: bool
    demonstration: int | None
    feedback: bool
    context: str
    credit: TokenCredit | None = None


@dataclass
class Callbacks:
    on_attempts: Callable[[list[Attempt]], None] | None = None
    on_metrics: Callable[[int, dict[str, float]], None] | None = None
    on_checkpoint: Callable[[int, str, str], None] | None = None  # (step, path, kind "lora"|"full")
    should_stop: Callable[[], bool] | None = None
    on_teacher: Callable[[list[TeacherView]], None] | None = None

    def attempts(self, attempts: list[Attempt]) -> None:
        if self.on_attempts and attempts:
            self.on_attempts(attempts)

    def teacher(self, views: list[TeacherView]) -> None:
        if self.on_teacher and views:
            self.on_teacher(views)

    def metrics(self, step: int, metrics: dict[str, float]) -> None:
        if self.on_metrics:
            self.on_metrics(step, metrics)

    def checkpoint(self, step: int, path: str, kind: str) -> None:
        if self.on_checkpoint:
            self.on_checkpoint(step, path, kind)

    def stop_requested(self) -> bool:
        return bool(self.should_stop and self.should_stop())


# How often a long stage asks whether to stop (``stop_poll``): at most this many seconds apart.
STOP_POLL_S = 0.5


class StopRequested(Exception):
    """Raised from inside a long stage (generation, scoring, a policy update) when the run was asked to stop
    there; the loops catch it and end the run as stopped (nothing of the interrupted round is reported)."""


class StopPoll:
    """``callbacks.stop_requested`` for polling inside long stages: asks at most once per ``every_s`` seconds
    (the question may cost a database round trip) and, once it said stop, keeps saying so without asking.

    ``poll()`` answers; ``check()`` raises ``StopRequested`` when the answer is stop."""

    def __init__(self, should_stop: Callable[[], bool], every_s: float = 0.5):
        self._should_stop, self.every_s = should_stop, every_s
        self._next = 0.0
        self.stopped = False

    def poll(self) -> bool:
        if not self.stopped and time.monotonic() >= self._next:
            self.stopped = bool(self._should_stop())
            self._next = time.monotonic() + self.every_s
        return self.stopped

    __call__ = poll

    def check(self) -> None:
        if self.poll():
            raise StopRequested


def stop_poll(callbacks: Callbacks | None, every_s: float | None = None) -> StopPoll | None:
    """A ``StopPoll`` over ``callbacks.stop_requested`` asking at most every ``every_s`` seconds (default
    ``STOP_POLL_S``); None when nothing can ask the run to stop."""
    if callbacks is None or callbacks.should_stop is None:
        return None
    return StopPoll(callbacks.stop_requested, STOP_POLL_S if every_s is None else every_s)


# ---------------------------------------------------------------------------------------------------
# Optional metric sinks (TensorBoard, Weights & Biases): a real one only when enabled and importable
# ---------------------------------------------------------------------------------------------------

class NullSink:
    """A metric sink that drops everything (the sink is off, or its package is not installed)."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardSink(NullSink):
    def __init__(self, writer):
        self.writer = writer

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink(NullSink):
    def __init__(self, run):
        self.run = run

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


def _missing(what: str, package: str) -> NullSink:
    warnings.warn(f"{what}: true, but {package!r} is not installed; not logging there (pip install {package})",
                  stacklevel=3)
    return NullSink()


def tensorboard_sink(enabled: bool, log_dir: str) -> NullSink:
    """TensorBoard event files under ``log_dir`` when enabled and tensorboard is installed, else a NullSink."""
    if not enabled:
        return NullSink()
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return _missing("tensorboard", "tensorboard")
    return TensorBoardSink(SummaryWriter(log_dir))


def wandb_sink(enabled: bool, *, project: str, run_dir: str, config: dict | None = None) -> NullSink:
    """A Weights & Biases run (files under ``run_dir``) when enabled and wandb is installed, else a NullSink."""
    if not enabled:
        return NullSink()
    try:
        import wandb
    except ImportError:
        return _missing("wandb", "wandb")
    return WandbSink(wandb.init(project=project, dir=run_dir, config=config))
