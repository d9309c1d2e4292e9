"""The algorithm half of the ``sdpo`` command line (``workers/cli.py`` adds the service commands).

Commands keep no logic: they parse arguments, call the library, print, and exit 2 on invalid input. Modules that
import torch or transformers are imported inside the commands that use them, so that ``sdpo --help`` and the
service commands start in a fraction of a second.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from tqdm import tqdm

from sdpo.callbacks import Callbacks
from sdpo.config import ConfigError, apply_overrides, read_config_file
from sdpo.data.lcb import PROMPTS, LcbError, find_problem, import_lcb, parse_date
from sdpo.data.problem import load_problem
from sdpo.envs.code import evaluate
from sdpo.toy.generator import splits
from sdpo_sandbox import ConfigError as SandboxConfigError
from sdpo_sandbox import SandboxConfig, SandboxUnavailable, serve

app = typer.Typer(no_args_is_help=True, add_completion=False, help="SDPO Studio: self-distilled policy optimization.")
data_app = typer.Typer(no_args_is_help=True, help="Dataset tools.")
app.add_typer(data_app, name="data")


def fail(message: str, code: int = 2) -> None:
    """Print a clear error and exit (2 = invalid input)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command("make-tiny-model")
def make_tiny_model_cmd(
    out: str = typer.Option(..., "--out", help="Directory to write the checkpoint to."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Build the tiny local causal LM + byte-level BPE tokenizer (no download)."""
    from sdpo.tiny import make_tiny_model

    path = make_tiny_model(out, seed=seed)
    typer.echo(str(path))


@data_app.command("import-lcb")
def import_lcb_cmd(
    files: list[str] = typer.Argument(..., help="LiveCodeBench code_generation_lite JSONL file(s): the release "
                                      "files test.jsonl .. test6.jsonl of the Hugging Face dataset "
                                      "livecodebench/code_generation_lite (downloaded by you)."),
    out: str = typer.Option(..., "--out", help="Directory for train.jsonl, test.jsonl and problems.jsonl."),
    since: str | None = typer.Option(None, "--since", help="Keep contests on/after this ISO date."),
    until: str | None = typer.Option(None, "--until", help="Keep contests before this ISO date."),
    cutoff: str | None = typer.Option(
        None, "--cutoff", help="Split questions by contest date (before -> train). Default: split tests."
    ),
    split_tests: float = typer.Option(0.5, "--split-tests", help="Fraction of each question's tests for training."),
    seed: int = typer.Option(0, "--seed"),
    prompt: str = typer.Option("ours", "--prompt", help="ours (system + user message) | reference (the "
                               "reference's CODE_PROMPT, one user message)."),
) -> None:
    """Import LiveCodeBench rows (public + private tests, decoded safely) into train/test/problem files."""
    if prompt not in PROMPTS:
        fail(f"--prompt: got {prompt!r}; allowed values are {', '.join(map(repr, PROMPTS))}")
    for f in files:
        if not Path(f).is_file():
            fail(f"{f}: no such file")
    for name, value in (("--since", since), ("--until", until), ("--cutoff", cutoff)):
        if value is not None:
            try:
                parse_date(value)
            except ValueError as e:
                fail(f"{name}: {e}; expected e.g. 2025-02-01")
    try:
        summary = import_lcb(files, out, since=since, until=until, cutoff=cutoff,
                             split_tests_fraction=split_tests, seed=seed, prompt=prompt)
    except ConfigError as e:
        fail(f"--split-tests: {str(e).split(': ', 1)[1]}")
    except LcbError as e:
        fail(str(e))
    for line in summary.lines():
        typer.echo(line)


@app.command("make-toy-model")
def make_toy_model_cmd(
    out: str = typer.Option(..., "--out", help="Directory to write the checkpoint to."),
    seed: int = typer.Option(0, "--seed"),
    minutes: float | None = typer.Option(None, "--minutes", help="Optional wall-clock cap; hitting it stops "
                                         "early and the model then depends on the machine's speed."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (default: the fixed default count, "
                                     "so the seed determines the model)."),
    threads: int = typer.Option(2, "--threads", help="CPU threads for training (the weights do not depend on "
                                 "it)."),
    examples: int = typer.Option(40_000, "--examples", help="Size of the pretraining corpus."),
    init_from: str | None = typer.Option(None, "--init-from", help="Continue training this toy checkpoint."),
    mix: str | None = typer.Option(None, "--mix", help="Weights of the direct,solution,feedback,copy examples, "
                                   "e.g. 25,15,15,45 (the default)."),
    eval_problems: int = typer.Option(32, "--eval-problems", help="Held-out easy and hard problems to report "
                                      "on after training (0 = skip)."),
    samples: int = typer.Option(4, "--samples", help="Samples per problem for the sampled solve rate."),
) -> None:
    """Train the toy-world model from scratch on CPU and report what it learned."""
    from sdpo.toy.pretrain import ToyModelConfig, make_toy_model

    extra: dict = {}
    if mix is not None:
        try:
            extra["mix"] = tuple(float(w) for w in mix.split(","))
        except ValueError:
            fail(f"--mix: got {mix!r}; expected comma-separated numbers such as 25,15,15,45")
    try:
        cfg = ToyModelConfig(seed=seed, minutes=minutes, steps=steps, threads=threads, n_examples=examples,
                              init_from=init_from, **extra)
    except ConfigError as e:
        fail(str(e))
    if eval_problems < 0 or samples < 1:
        fail(f"--eval-problems must be >= 0 and --samples >= 1 (got {eval_problems}, {samples})")
    path = make_toy_model(out, cfg, log=typer.echo)
    if eval_problems:
        from sdpo.models import load_model_and_tokenizer
        from sdpo.toy.measure import format_report, report

        model, tokenizer = load_model_and_tokenizer(path)
        held = splits(0, eval_problems, eval_problems, seed=seed)
        rep = report(model, tokenizer, held["test"], held["hard"], samples=samples, seed=seed)
        (Path(path) / "toy_eval.json").write_text(json.dumps(rep, indent=1) + "\n")
        typer.echo(format_report(rep))
    typer.echo(str(path))


@app.command("train")
def train_cmd(
    config: str = typer.Option(None, "--config", help="YAML run config (see configs/)."),
    set_: list[str] = typer.Option([], "--set", help="Override: key=value (dotted keys for nesting)."),
    out: str = typer.Option(None, "--out", help="Run directory (default: the config's out_dir)."),
) -> None:
    """Train with SDPO / GRPO / hybrid / SRPO / SC-SDPO / SDPG (``loss``; docs/family.md). The whole config is
    validated before any model is loaded; the data (malformed rows, prompts over max_prompt_len) before any step.
    Settings left unset fit the model (CPU-sized for the demo models or a CPU, the paper's on a GPU)."""
    from sdpo.models import default_model_path
    from sdpo.sizing import fit_config
    from sdpo.trainer import TrainConfig, train

    overrides = list(set_) + ([f"out_dir={out}"] if out else [])
    try:
        data = apply_overrides(read_config_file(config) if config is not None else {}, overrides)
        model_path = data.get("model_path") if isinstance(data.get("model_path"), str) else None
        cfg = TrainConfig.from_dict(fit_config("train", data, model_path=model_path or default_model_path()))
    except ConfigError as e:
        fail(str(e))
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    if rank0:
        typer.echo(f"run directory: {cfg.out_dir}")
    try:
        result = train(cfg)
    except ValueError as e:  # ConfigError (field: ...), DatasetError (file:line: field ...), a named bad value
        fail(str(e))
    if rank0:
        typer.echo(f"done: {result.steps} steps; metrics in {cfg.out_dir}/metrics.jsonl; "
                   f"checkpoints: {', '.join(result.checkpoints) or 'none'}")


@app.command("check")
def check_cmd(
    tests: str = typer.Option(..., "--tests", help="TestSpec JSON file (LiveCodeBench / lasgroup format)."),
    response: str = typer.Option(..., "--response", help="Model response (markdown with a ```python block)."),
    dense: bool = typer.Option(False, "--dense", help="Run every test; reward = fraction passed."),
    truncated: bool = typer.Option(False, "--truncated", help="The response was cut at the length limit."),
) -> None:
    """Run a response against unit tests in the sandbox and print the CodeResult as JSON."""
    try:
        spec_text = Path(tests).read_text(encoding="utf-8")
        text = Path(response).read_text(encoding="utf-8")
    except OSError as e:
        fail(f"cannot read input: {e}")
    try:
        result = evaluate(text, spec_text, sparse=not dense, truncated=truncated)
    except SandboxUnavailable as e:
        fail(str(e))
    except ValueError as e:
        fail(f"invalid tests in {tests}: {e}")
    typer.echo(json.dumps(result.to_dict(), indent=2))


sandbox_app = typer.Typer(no_args_is_help=True, help="Code sandbox service.")
app.add_typer(sandbox_app, name="sandbox")


@sandbox_app.command("serve")
def sandbox_serve_cmd(
    socket_path: str = typer.Option(..., "--socket", help="Unix socket path to listen on (created mode 0600)."),
    slots: int = typer.Option(0, "--slots", help="Concurrent executors (0 = number of CPUs)."),
    socket_uid: int = typer.Option(None, "--socket-uid",
                                   help="Give the socket to this uid (the workers' user, e.g. 1000 in our images)."),
) -> None:
    """Serve the sandbox pool on a unix socket (clients: sdpo_sandbox.SandboxClient)."""
    try:
        cfg = SandboxConfig(slots=slots)
    except SandboxConfigError as e:
        fail(str(e))
    if socket_uid is not None and socket_uid < 0:
        fail(f"--socket-uid: got {socket_uid}; expected a uid >= 0 (the workers' user)")
    typer.echo(f"sandbox serving on {socket_path}")
    try:
        serve(socket_path, cfg, socket_uid=socket_uid)
    except SandboxUnavailable as e:
        fail(str(e))


@app.command("solve")
def solve_cmd(
    problem: str = typer.Option(None, "--problem", help="Problem JSON file (title, statement, tests, ...)."),
    lcb: str = typer.Option(None, "--lcb", help="LiveCodeBench JSONL file to take the problem from."),
    question_id: str = typer.Option(None, "--question-id", help="With --lcb: the row's question_id."),
    prompt: str = typer.Option("ours", "--prompt", help="With --lcb: ours | reference (the reference's "
                               "CODE_PROMPT as one user message)."),
    config: str = typer.Option(None, "--config", help="YAML SolveConfig (e.g. configs/paper/ttt_sdpo.yaml); "
                               "--strategy, --budget and --set override it."),
    strategy: str = typer.Option(None, "--strategy", help="sdpo | best_of_k | multiturn (default sdpo)."),
    budget: int = typer.Option(None, "--budget", help="Attempts in all (default: 16 for the demo models or on a "
                               "CPU, 64 on a GPU)."),
    model: str = typer.Option(None, "--model", help="Local HF checkpoint (default: SDPO_MODEL / toy / tiny)."),
    set_: list[str] = typer.Option([], "--set", help="SolveConfig override: key=value (dotted keys nest)."),
    out: str = typer.Option("runs/solve", "--out", help="Directory for result.json, attempts.jsonl, teacher.jsonl "
                            "(sdpo: what the self-teacher said about each attempt), weights."),
) -> None:
    """Test-time solve of one problem: SDPO on the problem, or the best-of-k / multi-turn baselines. Settings
    left unset fit the model (CPU-sized for the demo models or a CPU, the paper's on a GPU)."""
    # 1. Problem and settings, all validated before the model is loaded.
    if (problem is None) == (lcb is None):
        fail("give exactly one of --problem FILE or --lcb FILE --question-id ID")
    try:
        if problem is not None:
            if not Path(problem).is_file():
                fail(f"--problem: no such file: {problem}")
            prob = load_problem(problem)
        else:
            if not question_id:
                fail("--question-id: required with --lcb")
            if prompt not in PROMPTS:
                fail(f"--prompt: got {prompt!r}; allowed values are {', '.join(map(repr, PROMPTS))}")
            if not Path(lcb).is_file():
                fail(f"--lcb: no such file: {lcb}")
            try:
                prob = find_problem([lcb], question_id, prompt=prompt)
            except KeyError as e:
                fail(f"--question-id: {e.args[0]}")
    except ValueError as e:  # Problem.parse / LcbError: the message starts with the field
        fail(f"problem: {e}")
    if model is not None and not (Path(model) / "config.json").is_file():
        fail(f"--model: no Hugging Face checkpoint (config.json) at {model}")
    try:
        from sdpo.models import default_model_path
        from sdpo.sizing import fit_config
        from sdpo.ttt import SolveConfig

        data = read_config_file(config, field="--config") if config is not None else {}
        data.update({k: v for k, v in (("strategy", strategy), ("budget", budget)) if v is not None})
        data = apply_overrides(data, list(set_))
        cfg = SolveConfig.from_dict(fit_config("solve", data, model_path=model or default_model_path()))
    except ConfigError as e:
        fail(str(e))

    # 2. Run, writing attempts.jsonl as rounds finish, with a progress bar over the budget.
    from sdpo.ttt import solve_from_config

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    attempts_file = (out_dir / "attempts.jsonl").open("w", encoding="utf-8")
    teacher_file = (out_dir / "teacher.jsonl").open("w", encoding="utf-8")
    bar = tqdm(total=cfg.budget, desc=f"solve ({cfg.strategy})", unit="attempt", dynamic_ncols=True)

    numbered = [0]  # attempts arrive in order: "attempt" is the 1-based number "solved at attempt N" uses
    numbers: dict[tuple[int, int], int] = {}  # (round, index) -> attempt number

    def on_attempts(attempts) -> None:
        for a in attempts:
            numbered[0] += 1
            numbers[(a.round, a.index)] = numbered[0]
            attempts_file.write(json.dumps({
                "attempt": numbered[0], "round": a.round, "index": a.index, "reward": a.reward, "passed": a.passed,
                "total": a.total, "hidden_passed": a.hidden_passed, "hidden_total": a.hidden_total,
                "feedback": a.feedback, "code": a.code}) + "\n")
        attempts_file.flush()
        bar.update(len(attempts))
        bar.set_postfix(best=f"{max(a.reward for a in attempts):.2f}")

    def on_teacher(views) -> None:
        for v in views:
            teacher_file.write(json.dumps({
                "attempt": numbers.get((v.round, v.index)), "round": v.round, "index": v.index,
                "distilled": v.distilled,
                "demonstration": None if v.demonstration is None else numbers.get((v.round, v.demonstration)),
                "feedback": v.feedback, "context": v.context,
                "credit": v.credit.to_dict() if v.credit is not None else None}) + "\n")
        teacher_file.flush()

    try:
        result = solve_from_config(prob, cfg, Callbacks(on_attempts=on_attempts, on_teacher=on_teacher),
                                   model_path=model, out_dir=out_dir)
    except ValueError as e:  # ConfigError found once the model is loaded (context_budget), a named bad value
        fail(str(e))
    finally:
        bar.close()
        attempts_file.close()
        teacher_file.close()

    # 3. result.json and the solution.
    (out_dir / "result.json").write_text(json.dumps({
        "strategy": result.strategy, "budget": result.budget, "attempts_used": result.attempts_used,
        "discovered_at": result.discovered_at, "solution": result.solution, "rounds": result.rounds,
    }, indent=1) + "\n", encoding="utf-8")
    if result.discovered_at is not None:
        typer.echo(f"solved at attempt {result.discovered_at} of {result.budget}:\n")
        typer.echo(f"```python\n{(result.solution or '').rstrip()}\n```")
    else:
        typer.echo(f"no solution found in {result.attempts_used} attempts")
    typer.echo(f"results in {out_dir}/result.json, attempts in {out_dir}/attempts.jsonl")


def main() -> None:  # pragma: no cover - console entry
    app()
