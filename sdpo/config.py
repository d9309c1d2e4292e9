"""Configuration of the self-distillation objective (SDPO, arXiv 2601.20802, Sec. 3).

Field names follow the reference implementation (lasgroup/SDPO, ``actor.self_distillation``) where one
exists. Every value is validated once, at construction, with a message naming the field, the bad value and
what is allowed.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Self

import yaml

DEFAULT_REPROMPT_TEMPLATE = "{prompt}{solution}{feedback}\n\nCorrectly solve the original question."
DEFAULT_SOLUTION_TEMPLATE = "\nCorrect solution:\n\n{successful_previous_attempt}"
DEFAULT_FEEDBACK_TEMPLATE = (
    "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback_raw}"
)

MODES = ("logit", "token")
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm",
                  "seq-mean-token-mean-all")
TRUNCATIONS = ("right", "left", "error")
TEACHER_REGULARIZATIONS = ("ema", "trust-region", "live", "base")


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
    loss_agg_mode: how per-token losses become one loss (``sdpo.losses.aggregation``); also GRPO's.
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


# ---------------------------------------------------------------------------------------------------------
# Reading settings as a user means them: the one parser of config files, ``--set KEY=VALUE`` and form fields
# ---------------------------------------------------------------------------------------------------------

class _UserLoader(yaml.SafeLoader):
    """YAML with numbers read like Python literals: ``1e-5``, ``1E-5``, ``.5``, ``1_000`` and ``1e3`` (an integer,
    1000: an exponent without a fraction) are numbers, ``010`` is ten; ``true``/``false`` are the booleans
    (``yes``/``no``/``on``/``off`` stay text), and there are no sexagesimal numbers or timestamps (YAML 1.1's
    ``SafeLoader`` reads ``1e-5`` as text, ``010`` as eight and ``1:30`` as ninety)."""


_REPLACED_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool", "timestamp")}
_UserLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _REPLACED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_INT_RE = re.compile(r"^[-+]?[0-9][0-9_]*(?:[eE]\+?[0-9]+)?$")
_FLOAT_RE = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*|[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
                           |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.VERBOSE)
_UserLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                  list("tTfF"))
_UserLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_RE, list("-+0123456789"))
_UserLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def _construct_int(loader: yaml.SafeLoader, node) -> int | float:
    text = loader.construct_scalar(node).replace("_", "")
    mantissa, _, exponent = text.lower().partition("e")
    if not exponent:
        return int(mantissa)
    if int(exponent) > 18:  # 1e400 is not a count anyone means; a float (inf) the checks then reject
        return float(text)
    return int(mantissa) * 10 ** int(exponent)


def _construct_float(loader: yaml.SafeLoader, node) -> float:
    text = loader.construct_scalar(node).replace("_", "")
    low = text.lower()
    if low.endswith(".inf"):
        return -math.inf if low.startswith("-") else math.inf
    if low == ".nan":
        return math.nan
    return float(text)


_UserLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_UserLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_NULLS = ("null", "Null", "NULL", "~")


def parse_value(text: Any) -> Any:
    """One setting's value typed by a user (``--set`` or a form field): a number as above, ``true``/``false``,
    ``null``, a list (``[q_proj, v_proj]``), a mapping in braces, a quoted string (``"1e-5"`` is text), else the
    text itself (stripped). Empty text is None. Values that are not text are returned as they are."""
    if not isinstance(text, str):
        return text
    s = text.strip()
    if not s:
        return None
    try:
        value = yaml.load(s, Loader=_UserLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        return s
    if value is None and s not in _NULLS:  # "#3" (a YAML comment), "---": the text was meant
        return s
    if isinstance(value, dict) and not s.startswith("{"):  # "Question: {x}" is text, not a mapping
        return s
    return value


def parse_override(pair: str) -> tuple[str, Any]:
    """``"self_distillation.alpha=1"`` -> ``("self_distillation.alpha", 1)``; ConfigError without ``=``."""
    key, sep, raw = pair.partition("=")
    if not sep or not key.strip():
        raise ConfigError("set", f"{pair!r}: expected KEY=VALUE, e.g. lr=1e-5 or self_distillation.alpha=1")
    return key.strip(), parse_value(raw)


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``data[a][b] = value`` for ``"a.b"``, creating mappings on the way; ConfigError when ``a`` is not one."""
    node = data
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(dotted, f"{'.'.join(parts[:i + 1])} is not a mapping of settings")
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``data`` with ``KEY=VALUE`` overrides applied in order (dotted keys nest; values read with
    ``parse_value``)."""
    out = copy.deepcopy(data)
    for pair in overrides:
        key, value = parse_override(pair)
        set_path(out, key, value)
    return out


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, mappings merged key by key."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(text: str | None, *, field: str = "config") -> dict[str, Any]:
    """A mapping of settings from YAML (or JSON) text read with the rules of ``parse_value``; empty text is {}.
    ConfigError naming ``field`` when the text is not YAML or not a mapping."""
    if text is None or not text.strip():
        return {}
    try:
        data = yaml.load(text, Loader=_UserLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(field, f"not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(field, f"must hold a mapping of settings (key: value), got {type(data).__name__}")
    return data


def read_config_file(path: str | Any, *, field: str = "config") -> dict[str, Any]:
    """``load_yaml`` of a file; ConfigError naming ``field`` when it cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(field, f"file not found: {path}") from None
    except OSError as e:
        raise ConfigError(field, f"cannot read {path}: {e.strerror}") from None
    try:
        return load_yaml(text, field=field)
    except ConfigError as e:
        raise ConfigError(field, f"{path}: {str(e).split(': ', 1)[1]}") from None


def compose_config(values: dict[str, Any] | None = None, overrides=(), text: str = "", *,
                   text_field: str = "config", fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """One config from the pieces a form or a command line gives, later pieces winning: ``values`` (already
    typed), ``overrides`` (``KEY=VALUE`` strings, or ``(key, text)`` pairs whose empty text keeps the default),
    ``text`` (a YAML mapping, named ``text_field`` in errors), then ``fixed`` (set by the caller itself)."""
    out = dict(values or {})
    for item in overrides:
        if isinstance(item, str):
            key, value = parse_override(item)
        else:
            key, raw = item
            value = parse_value(raw)
            if value is None:
                continue
        set_path(out, key, value)
    out = deep_merge(out, load_yaml(text, field=text_field))
    return deep_merge(out, fixed or {})


# ---------------------------------------------------------------------------------------------------------
# Upper limits: the same for every entry point (CLI, UI, API, config files all build the config dataclasses)
# ---------------------------------------------------------------------------------------------------------
LIMITS: dict[str, int] = {
    "budget": 100_000,
    "n": 1_024,
    "ppo_epochs": 1_000,
    "max_new_tokens": 131_072,
    "context_budget": 262_144,
    "max_prompt_len": 131_072,
    "self_distillation.max_reprompt_len": 262_144,
    "max_steps": 10_000_000,
    "train_batch_size": 65_536,
    "mini_batch_size": 1_048_576,
    "micro_batch_size": 65_536,
    "sampler_batch_size": 65_536,
    "val_k": 1_024,
    "val_max_questions": 1_000_000,
    "lora_r": 4_096,
    "lora_alpha": 65_536,
}


def check_limits(cfg: Any, limits: dict[str, int] = LIMITS) -> None:
    """ConfigError naming the first field of ``cfg`` (a dataclass; dotted names reach into nested ones) whose
    whole-number value is above its limit. Called first in ``__post_init__``, so the error names the field the
    user set, not one computed from it. Values of the wrong type are left to the type checks."""
    for name, limit in limits.items():
        value: Any = cfg
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            raise ConfigError(name, f"got {value}; must be <= {limit} (an upper limit against typos)")


# ---------------------------------------------------------------------------------------------------------
# The policy and how it samples: the settings every entry point shares, declared and validated once
# ---------------------------------------------------------------------------------------------------------
ADAPTERS = ("full", "lora")
SAMPLERS = ("auto", "hf", "vllm")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_target_modules(value: Any) -> list[str] | None:
    """Validate a ``lora_target_modules`` setting: None (the default set), a non-empty list of module names, or
    one name (returned as a one-element list: ``--set lora_target_modules=q_proj``)."""
    if isinstance(value, str) and value:
        return [value]
    if value is None or (isinstance(value, list) and value and all(isinstance(m, str) and m for m in value)):
        return value
    raise ConfigError("lora_target_modules", f"got {value!r}; expected a list of module names (e.g. "
                      "['q_proj', 'v_proj']), one name, or null for the default set")


@dataclass
class PolicyConfig:
    """The policy (the model being adapted) and how it samples. ``sdpo.update.UpdateConfig`` extends it, and the
    entry points' configs (``sdpo.trainer.TrainConfig``, ``sdpo.ttt.SolveConfig``) extend that; this is where
    these settings are declared and validated, once, right after the upper limits (``check_limits``).

    adapter: "lora" (a few MB per run, the base stays shared) | "full". lora_r, lora_alpha, lora_dropout: the
        LoRA adapter; lora_target_modules: module names (e.g. ['q_proj', 'v_proj']; one name alone is a
        one-element list) or None for ``sdpo.adapters.DEFAULT_LORA_TARGETS``.
    n: samples per question, a group (at test time the attempts of one round). max_new_tokens: the longest
        response (also the constant divisor of ``seq-mean-token-sum-norm`` unless
        ``self_distillation.loss_scale_factor`` is set).
    temperature, top_p, top_k: sampling; GRPO ratios and rollout correction use log-probs at ``temperature``.
    seed: base of every sampling seed.
    sampler: "auto" | "hf" | "vllm"; sampler_batch_size: prompts per generate call; gpu_memory_utilization:
        vLLM's share of the GPU. device: "auto" | "cpu" | "cuda". dtype: "auto" | "float32" | "bfloat16" |
        "float16".
    """

    adapter: str = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | None = None
    n: int = 8
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int = 0
    sampler: str = "auto"
    sampler_batch_size: int = 16
    gpu_memory_utilization: float = 0.5
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        check_limits(self)  # first: a typo is reported on the field the user set, not on one computed from it
        _choice("adapter", self.adapter, ADAPTERS)
        for name in ("lora_r", "lora_alpha", "n", "max_new_tokens", "sampler_batch_size"):
            _number(name, getattr(self, name), lo=1, integer=True)
        _number("lora_dropout", self.lora_dropout, lo=0.0, hi=1.0, hi_open=True)
        self.lora_target_modules = check_target_modules(self.lora_target_modules)
        _number("temperature", self.temperature, lo=0.0, lo_open=True)
        _number("top_p", self.top_p, lo=0.0, hi=1.0, lo_open=True)
        if self.top_k is not None:
            _number("top_k", self.top_k, lo=1, integer=True)
        _number("seed", self.seed, lo=0, integer=True)
        _choice("sampler", self.sampler, SAMPLERS)
        _number("gpu_memory_utilization", self.gpu_memory_utilization, lo=0.0, hi=1.0, lo_open=True)
        _choice("device", self.device, DEVICES)
        _choice("dtype", self.dtype, DTYPES)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build from a mapping; unknown keys are rejected by name."""
        return build_dataclass(cls, dict(data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
