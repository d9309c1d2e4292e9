"""Where the engines (``sdpo``) meet the services (``backend``): validation callables for the services and
conversions between the engines' records and the database's.

The services never import ``sdpo``; they take these functions as arguments:

* ``validate_config(kind, config)`` builds the engine's own config dataclass (``sdpo.ttt.SolveConfig`` or
  ``sdpo.trainer.TrainConfig``), so a job is accepted exactly when the engine would accept it, and returns
  the normalized config (every field, defaults filled) that is stored on the job;
* ``parse_problem(data)`` parses with ``sdpo.data.problem.Problem.parse``.

Both re-raise engine errors as ``backend.errors.InvalidInput`` naming the field. (``distributed: fsdp`` on a
CPU-only host is the trainer's own rule: ``TrainConfig.from_dict``.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from backend.errors import InvalidInput
from backend.schemas import AttemptIn, ParsedProblem, RawConfig, TeacherViewIn

# Keys of a train config that the worker sets per job (the job's folder, its resume point); a submitted
# config may not choose them.
TRAIN_RUNTIME_KEYS = ("out_dir", "run_dir", "resume_from")


def _field_error(e: Exception, default: str) -> InvalidInput:
    """``ConfigError`` carries ``.field``; other engine ``ValueError``s start with ``"field: "``."""
    field = getattr(e, "field", None)
    message = str(e)
    if field is None:
        head, sep, rest = message.partition(": ")
        if sep and head and " " not in head:
            field, message = head, rest
        else:
            field = default
    elif message.startswith(f"{field}: "):
        message = message[len(field) + 2:]
    return InvalidInput(field, message)


def _to_dict(cfg: Any) -> dict[str, Any]:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)


def build_solve_config(config: dict[str, Any]):
    from sdpo.ttt import SolveConfig

    return SolveConfig.from_dict(dict(config))


def build_train_config(config: dict[str, Any], **runtime: Any):
    from sdpo.trainer import TrainConfig

    return TrainConfig.from_dict({**config, **{k: v for k, v in runtime.items() if v is not None}})


def compose(config: dict[str, Any] | RawConfig) -> dict[str, Any]:
    """A mapping from a ``RawConfig`` as typed in a form, read by the one settings parser
    (``sdpo.config.compose_config``); a mapping is returned as it is."""
    if not isinstance(config, RawConfig):
        return dict(config)
    from sdpo.config import compose_config

    return compose_config(config.values, config.fields, config.text, text_field=config.text_field,
                          fixed=config.fixed)


def model_for(kind: str, config: dict[str, Any], model: str = "") -> tuple[str, str | None]:
    """(field, path) of the model a job will load: ``model`` (field "model"), else a train config's
    ``model_path``, else the server's default (``Settings.model``; field "model"). InvalidInput when there is no
    checkpoint there, unless it is the default tiny model, which the worker builds on first use (the path is
    then None: not built yet)."""
    from backend.settings import get_settings

    settings = get_settings()
    field, path = "model", (model or "").strip()
    if not path and kind == "train" and config.get("model_path"):
        field, path = "model_path", str(config["model_path"])
    if not path:
        path = settings.model
    p = Path(path).expanduser()
    if (p / "config.json").is_file():
        return field, str(p)
    if p.resolve() == settings.default_model_path.resolve():
        return field, None
    raise InvalidInput(field, f"no Hugging Face checkpoint (config.json) at {path}; give a local checkpoint folder "
                       f"as seen by the workers (build the demo model with `sdpo make-tiny-model --out {path}`)")


def validate_config(kind: str, config: dict[str, Any] | RawConfig, *, model: str = "",
                    gpu: bool | None = None) -> dict[str, Any]:
    """Build the engine config of ``kind`` from ``config`` (a mapping or a form's ``RawConfig``) for the job's
    ``model`` ("" = the server's default, checked to exist now, not when the job runs); the settings it leaves
    unset get defaults that fit the model and the machines (``sdpo.sizing.fit_config``; ``gpu``: whether the
    workers offer GPUs, None = not known). Return it normalized, or raise ``InvalidInput``."""
    from sdpo.sizing import fit_config

    try:
        config = compose(config)
        if kind not in ("solve", "train"):
            raise InvalidInput("kind", f"got {kind!r}; allowed values are 'solve', 'train'")
        if kind == "train":
            for key in TRAIN_RUNTIME_KEYS:
                if config.get(key):
                    raise InvalidInput(key, "is set by the worker for each job (the job's folder); leave it out")
        _, path = model_for(kind, config, model)
        config = fit_config(kind, config, model_path=path, cuda=gpu)
        if kind == "solve":
            return _to_dict(build_solve_config(config))
        normalized = _to_dict(build_train_config(config))
        for key in TRAIN_RUNTIME_KEYS:
            normalized.pop(key, None)
        return normalized
    except InvalidInput:
        raise
    except (ValueError, TypeError) as e:
        raise _field_error(e, "config") from None


def parse_problem(data: dict[str, Any]) -> ParsedProblem:
    """Parse a problem with the engine's format; returns what the problem service stores and checks."""
    from sdpo.data.problem import Problem

    try:
        problem = Problem.parse(data)
    except (ValueError, TypeError) as e:
        raise _field_error(e, "problem") from None
    hidden = len(problem.hidden_tests) if problem.hidden_tests is not None else 0
    return ParsedProblem(title=problem.title, statement=problem.statement, n_public_tests=len(problem.tests),
                         n_hidden_tests=hidden, data=problem.to_dict())


def attempt_in(a: Any) -> AttemptIn:
    """``sdpo.callbacks.Attempt`` -> the service's ``AttemptIn``."""
    return AttemptIn(
        round=a.round, index=a.index, response=a.response, code=a.code, reward=float(a.reward),
        passed_public=a.passed, total_public=a.total, passed_hidden=a.hidden_passed,
        total_hidden=a.hidden_total, feedback=a.feedback, tokens=a.tokens, seconds=float(a.seconds),
        task_id=a.task_id,
    )


def teacher_view_in(v: Any) -> TeacherViewIn:
    """``sdpo.callbacks.TeacherView`` -> the service's ``TeacherViewIn`` (the per-token view as plain JSON)."""
    return TeacherViewIn(round=v.round, index=v.index, distilled=v.distilled, demonstration=v.demonstration,
                         feedback=v.feedback, context=v.context,
                         credit=v.credit.to_dict() if v.credit is not None else None)
