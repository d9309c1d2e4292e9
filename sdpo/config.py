"""Configuration of the self-distillation objective (SDPO, arXiv 2601.20802, Sec. 3).

Field names follow the reference implementation (lasgroup/SDPO, ``actor.self_distillation``) where one
exists. Every value is validated once, at construction, with a message naming the field, the bad value and
what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

DEFAULT_REPROMPT_TEMPLATE = "{prompt}{solution}{feedback}\n\nCorrectly solve the original question."
DEFAULT_SOLUTION_TEMPLATE = "\nCorrect solution:\n\n{successful_previous_attempt}"
DEFAULT_FEEDBACK_TEMPLATE = (
    "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback_raw}"
)

MODES = ("logit", "token")
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm",
                  "seq-mean-token-mean-all")
TRUNCATIONS = ("right", "left", "error")
TEACHER_REGULARIZATIONS = ("ema", "trust-region", "live")


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the field, the value and the fix."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def _choice(field: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(field, f"got {value!r}; allowed values are {', '.join(map(repr, allowed))}")


def _number(field: str, value: Any, *, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, hi_open: bool = False, integer: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        kind = "an integer" if integer else "a number"
        raise ConfigError(field, f"got {value!r}; expected {kind}")
    if not integer and not math.isfinite(value):
        raise ConfigError(field, f"got {value!r}; expected a finite number")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ConfigError(field, f"got {value!r}; must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ConfigError(field, f"got {value!r}; must be {'<' if hi_open else '<='} {hi}")


def _template(field: str, value: Any, required: tuple[str, ...]) -> None:
    if not isinstance(value, str):
        raise ConfigError(field, f"got {value!r}; expected a string template")
    for name in required:
        if "{" + name + "}" not in value:
            raise ConfigError(field, f"template must contain the placeholder {{{name}}}")
    try:
        value.format(**{name: "" for name in required})
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(
            field, f"template has an unknown or malformed placeholder ({e!r}); only {required} are filled"
        ) from None


@dataclass
class SelfDistillationConfig:
    """Self-distillation settings (paper Sec. 3; reference ``self_distillation`` block).

    mode: "logit" distils the full (or top-k) next-token distribution; "token" uses only the sampled
        token (requires alpha == 1.0).
    distillation_topk: k of the student's top-k support, or None for the full vocabulary.
    distillation_add_tail: add one bucket holding the remaining probability mass of each side.
    alpha: interpolation of the generalised Jensen-Shannon divergence; 0 = KL(teacher||student) (forward),
        1 = KL(student||teacher) (reverse).
    is_clip: clip of the off-policy importance ratio exp(logp - old_logp); None disables IS weighting.
    loss_agg_mode: how per-token losses become one loss (``sdpo.losses`` module docstring); also GRPO's.
        "seq-mean-token-mean-all" is the reference's (and TRL's) weighting: each sequence's token-mean,
        averaged over every sequence of the mini-batch, undistilled ones counting as zero. The default
        "token-mean" averages over distilled tokens only (docs/fidelity.md says why).
    loss_scale_factor: the constant divisor of "seq-mean-token-sum-norm" (the reference's name); None = the
        run's max_new_tokens (the trainer and the solver pass it), i.e. verl's padded response length.
    """

    mode: str = "logit"
    distillation_topk: int | None = 100
    distillation_add_tail: bool = True
    alpha: float = 0.5
    is_clip: float | None = 2.0
    temperature: float = 1.0
    loss_agg_mode: str = "token-mean"
    loss_scale_factor: int | None = None
    success_reward_threshold: float = 1.0
    dont_reprompt_on_self_success: bool = True
    remove_thinking_from_demonstration: bool = True
    include_environment_feedback: bool = True
    environment_feedback_only_without_solution: bool = True
    max_reprompt_len: int = 10240
    reprompt_truncation: str = "right"
    reprompt_template: str = DEFAULT_REPROMPT_TEMPLATE
    solution_template: str = DEFAULT_SOLUTION_TEMPLATE
    feedback_template: str = DEFAULT_FEEDBACK_TEMPLATE
    teacher_regularization: str = "ema"
    teacher_update_rate: float = 0.05

    def __post_init__(self) -> None:
        _choice("mode", self.mode, MODES)
        if self.distillation_topk is not None:
            _number("distillation_topk", self.distillation_topk, lo=1, integer=True)
        for name in ("distillation_add_tail", "dont_reprompt_on_self_success",
                     "remove_thinking_from_demonstration", "include_environment_feedback",
                     "environment_feedback_only_without_solution"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"got {getattr(self, name)!r}; expected true or false")
        _number("alpha", self.alpha, lo=0.0, hi=1.0)
        if self.mode == "token" and self.alpha != 1.0:
            raise ConfigError(
                "alpha", f"got {self.alpha!r}; mode='token' supports only alpha=1.0 (reverse KL); "
                "use mode='logit' for other values"
            )
        if self.is_clip is not None:
            _number("is_clip", self.is_clip, lo=0.0, lo_open=True)
        _number("temperature", self.temperature, lo=0.0, lo_open=True)
        _choice("loss_agg_mode", self.loss_agg_mode, LOSS_AGG_MODES)
        if self.loss_scale_factor is not None:
            _number("loss_scale_factor", self.loss_scale_factor, lo=1, integer=True)
        _number("success_reward_threshold", self.success_reward_threshold)
        _number("max_reprompt_len", self.max_reprompt_len, lo=1, integer=True)
        _choice("reprompt_truncation", self.reprompt_truncation, TRUNCATIONS)
        _template("reprompt_template", self.reprompt_template, ("prompt", "solution", "feedback"))
        _template("solution_template", self.solution_template, ("successful_previous_attempt",))
        _template("feedback_template", self.feedback_template, ("feedback_raw",))
        _choice("teacher_regularization", self.teacher_regularization, TEACHER_REGULARIZATIONS)
        _number("teacher_update_rate", self.teacher_update_rate, lo=0.0, hi=1.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SelfDistillationConfig:
        return build_dataclass(cls, data, prefix="")


def build_dataclass(cls: type, data: dict[str, Any], *, prefix: str = ""):
    """Construct dataclass ``cls`` from a mapping, rejecting unknown keys by name (``prefix.key``)."""
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or cls.__name__, f"expected a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            prefix + unknown[0], f"unknown key; known keys are {', '.join(sorted(known))}"
        )
    try:
        return cls(**data)
    except ConfigError as e:
        if prefix and not e.field.startswith(prefix):
            raise ConfigError(prefix + e.field, str(e).split(": ", 1)[1]) from None
        raise
