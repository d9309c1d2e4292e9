"""Pretraining corpus of the toy world: the three contexts SDPO relies on.

Every example is a chat (``messages``) plus the assistant ``response`` the model is trained to produce (loss
on the assistant tokens only, see :func:`encode`):

- ``direct``: the problem -> its solution (the student's context);
- ``solution``: the teacher context with a successful sibling ("Correct solution: ...") -> that solution;
- ``feedback``: the teacher context with the environment's feedback on a failed near-miss attempt -> the
  corrected solution;
- ``copy``: copy practice in the same "Correct solution" teacher context, where the shown program is not the
  problem's reference (half the time a near miss of it: one parameter / primitive / step changed; else the
  solution of another, unrelated pretraining problem) and the target is that shown program. The target cannot
  be predicted from the statement, only by copying, so the loss pushes a small model to learn to copy the
  demonstration (plain ``solution`` examples barely do: their target is mostly predictable from the problem).
  SDPO's teacher is only ever shown correct solutions, where "copy what is shown" is exactly right.

Teacher contexts are built by :func:`sdpo.reprompt.build_teacher_messages` with the default
:class:`sdpo.config.SelfDistillationConfig` templates, i.e. exactly what the trainer shows the teacher.

Near-miss attempts change one thing in the reference composition (a parameter, a sibling primitive, a missing
step, two steps swapped, an unguarded ``max``); one is kept only if it fails at least one test. Its feedback is
written by :func:`feedback_text` with the code environment's own ``build_feedback`` (``sdpo.envs.code``); the
per-test outputs are computed in-process from the composition's semantics, so no code runs while the corpus is
built (a test checks the text equals ``evaluate``'s on the real program).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sdpo.config import SelfDistillationConfig
from sdpo.envs.code import TestRecord, TestSpec, build_feedback
from sdpo.models import chat_ids
from sdpo.reprompt import build_teacher_messages
from sdpo.toy.generator import (
    PRIMITIVES,
    Op,
    ToyProblem,
    outputs_match,
    program_code,
    response_for,
    run_ops,
    stream,
)

KINDS = ("direct", "solution", "feedback", "copy")
DEFAULT_MIX = (0.25, 0.15, 0.15, 0.45)

# Primitive a careless attempt confuses with each one.
SIBLINGS: dict[str, tuple[str, ...]] = {
    "add": ("sub", "mul"), "sub": ("add",), "mul": ("add",), "even": ("odd",), "odd": ("even",),
    "gt": ("lt",), "lt": ("gt",), "sort": ("sortd", "rev"), "sortd": ("sort", "rev"), "rev": ("sort", "sortd"),
    "take": ("drop",), "drop": ("take",), "uniq": ("sort",), "cumsum": ("sq",), "abs": ("sq",), "sq": ("abs",),
    "sum": ("max", "len"), "max": ("min", "max!", "sum"), "min": ("max", "min!"), "len": ("sum",),
    "srev": ("ssort",), "upper": ("dup",), "novowel": ("remove",), "remove": ("replace",), "replace": ("remove",),
    "ssort": ("srev",), "stake": ("sdrop",), "sdrop": ("stake",), "dup": ("srev",), "count": ("slen",),
    "slen": ("count",),
}


@dataclass(frozen=True)
class Attempt:
    """A (possibly wrong) attempt at a problem: its ops, response text and per-test results."""

    ops: tuple[Op, ...]
    response: str
    results: tuple[tuple[str, str | None], ...]  # (stdout, error) per test input

    def passed(self, problem: ToyProblem) -> bool:
        return all(err is None and out == exp for (out, err), exp in zip(self.results, problem.outputs,
                                                                         strict=True))


@dataclass(frozen=True)
class CorpusExample:
    """One training chat. ``kind`` is one of :data:`KINDS`."""

    kind: str
    messages: list[dict[str, str]]
    response: str
    problem_id: str


def _run(problem: ToyProblem, ops: tuple[Op, ...]) -> tuple[tuple[str, str | None], ...]:
    """Per-test (stdout, error) of the program of ``ops``, from the composition's semantics (no exec)."""
    out: list[tuple[str, str | None]] = []
    for raw in problem.inputs:
        try:
            out.append((run_ops(problem.family, ops, raw), None))
        except (ValueError, IndexError, TypeError) as e:
            out.append(("", f"{type(e).__name__}: {e}"))
    return tuple(out)


def attempt(problem: ToyProblem, ops: tuple[Op, ...]) -> Attempt:
    return Attempt(ops, response_for(program_code(problem.family, ops)), _run(problem, ops))


def _mutations(problem: ToyProblem, rng: random.Random) -> list[tuple[Op, ...]]:
    """Candidate near-miss compositions (one change each), in random order."""
    ops = list(problem.ops)
    cands: list[tuple[Op, ...]] = []
    for i, op in enumerate(ops):
        prim = op.prim
        if len(prim.params) > 1:  # another parameter
            other = [a for a in prim.params if a != op.args]
            cands.append(tuple(ops[:i] + [Op(op.name, rng.choice(other))] + ops[i + 1:]))
        for sib in SIBLINGS.get(op.name, ()):  # a confused primitive (keeps the parameter when it fits)
            sp = PRIMITIVES[sib]
            args = op.args if len(op.args) == len(sp.slots) and op.args in sp.params else rng.choice(sp.params)
            cands.append(tuple(ops[:i] + [Op(sib, args)] + ops[i + 1:]))
        if prim.kind == "map" and len(ops) > 1:  # a forgotten step
            cands.append(tuple(ops[:i] + ops[i + 1:]))
        if i + 1 < len(ops) and ops[i + 1].prim.kind == "map":  # two steps in the wrong order
            cands.append(tuple(ops[:i] + [ops[i + 1], op] + ops[i + 2:]))
    rng.shuffle(cands)
    return cands


def near_miss(problem: ToyProblem, rng: random.Random) -> Attempt | None:
    """A failing attempt one change away from the reference, or None when every candidate passes."""
    for ops in _mutations(problem, rng):
        a = attempt(problem, ops)
        if not a.passed(problem):
            return a
    return None


def feedback_text(problem: ToyProblem, att: Attempt, *, stop_at_first_failure: bool = True) -> str:
    """The code environment's feedback on ``att`` (empty when it passes), as ``sdpo.envs.code.evaluate`` writes
    it for this program: per-test records are synthesised from the in-process results (tests run in order,
    stopping at the first failure as sparse-reward training does) and passed to the environment's own
    ``build_feedback``."""
    spec = TestSpec.parse(problem.tests())
    n_lines = len(program_code(problem.family, att.ops).splitlines())
    records: list[TestRecord] = []
    for i, ((out, err), exp) in enumerate(zip(att.results, problem.outputs, strict=True)):
        if err is not None:  # only the final (aggregate) line of a toy program can raise
            rec = TestRecord("runtime_error", message=f"{err} (line {n_lines} of your code)", index=i)
        else:
            rec = TestRecord("passed" if outputs_match(out, exp) else "wrong_answer", stdout=out, output=out,
                             index=i)
        records.append(rec)
        if stop_at_first_failure and rec.verdict != "passed":
            break
    return build_feedback(spec, records, code_found=True, truncated=False) or ""


def teacher_messages(problem: ToyProblem, *, solution: str | None = None, feedback: str | None = None,
                     cfg: SelfDistillationConfig | None = None) -> list[dict[str, str]]:
    """The teacher's chat for a failed attempt of ``problem`` given a successful sibling and/or feedback,
    built exactly as the trainer builds it (:func:`sdpo.reprompt.build_teacher_messages`)."""
    cfg = cfg or SelfDistillationConfig()
    prompts = [problem.messages()]
    responses, rewards, groups, fbs = ["(failed attempt)"], [0.0], [0], [feedback]
    if solution is not None:
        prompts.append(problem.messages())
        responses.append(solution)
        rewards.append(1.0)
        groups.append(0)
        fbs.append(None)
    ctx = build_teacher_messages(prompts, responses, rewards, groups, fbs, cfg)[0]
    if not ctx.distill_mask:
        raise ValueError("teacher_messages: needs a solution or non-empty feedback")
    return ctx.messages


FeedbackFn = Callable[[ToyProblem, Attempt], str]


def build_corpus(n: int, *, seed: int = 0, mix: Sequence[float] = DEFAULT_MIX, depths: Sequence[int] = (1, 2, 3),
                 feedback_fn: FeedbackFn = feedback_text,
                 cfg: SelfDistillationConfig | None = None) -> list[CorpusExample]:
    """``n`` examples from the 'pretrain' bucket (never test/RL/held-out problems), kinds drawn by ``mix``
    (weights of direct, solution, feedback, copy). Deterministic given ``seed``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: got {n!r}; expected an integer >= 0")
    if len(mix) != len(KINDS) or any(w < 0 for w in mix) or sum(mix) <= 0:
        raise ValueError(f"mix: got {tuple(mix)!r}; expected {len(KINDS)} non-negative weights of {KINDS}")
    cfg = cfg or SelfDistillationConfig()
    rng = random.Random(f"corpus-{seed}")
    problems = stream(seed=seed, depths=depths, split="pretrain")
    others = stream(seed=10**6 + seed, depths=depths, split="pretrain")  # unrelated programs to copy
    out: list[CorpusExample] = []
    while len(out) < n:
        p = next(problems)
        kind = rng.choices(KINDS, weights=mix)[0]
        sol = p.solution()
        if kind == "direct":
            out.append(CorpusExample(kind, p.messages(), sol, p.id))
        elif kind == "solution":
            out.append(CorpusExample(kind, teacher_messages(p, solution=sol, cfg=cfg), sol, p.id))
        elif kind == "feedback":
            wrong = near_miss(p, rng)
            if wrong is None:
                continue
            fb = feedback_fn(p, wrong)
            out.append(CorpusExample(kind, teacher_messages(p, feedback=fb, cfg=cfg), sol, p.id))
        else:
            if rng.random() < 0.5:
                wrong = near_miss(p, rng)
                shown = wrong.response if wrong is not None else None
            else:
                shown = next(others).solution()
            if shown is None or shown == sol:
                continue
            out.append(CorpusExample(kind, teacher_messages(p, solution=shown, cfg=cfg), shown, p.id))
    return out


def tokenizer_texts(examples: Sequence[CorpusExample]) -> list[str]:
    """Plain texts to train the BPE tokenizer on (message contents and responses)."""
    texts: list[str] = []
    for ex in examples:
        texts.extend(m["role"] + "\n" + m["content"] for m in ex.messages)
        texts.append("assistant\n" + ex.response)
    return texts


def encode(tokenizer, example: CorpusExample) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one example: labels are -100 except on the response and its end-of-turn token."""
    prompt = chat_ids(tokenizer, example.messages, add_generation_prompt=True)
    full = chat_ids(tokenizer, example.messages + [{"role": "assistant", "content": example.response}],
                    add_generation_prompt=False)
    if full[: len(prompt)] != prompt:
        raise ValueError("encode: the chat template does not tokenize the prompt as a prefix of the chat")
    eos = tokenizer.eos_token_id
    end = len(full) - 1 - full[::-1].index(eos)  # the response's end-of-turn token
    ids = full[: end + 1]
    labels = [-100] * len(prompt) + ids[len(prompt):]
    return ids, labels
