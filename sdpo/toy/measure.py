"""What the toy model learned: solve rates and the teacher-vs-student log-prob gaps.

- :func:`solve_rates`: greedy and sampled solve rate on toy problems. Responses are judged by the code
  environment (:func:`sdpo.envs.code.evaluate_many`): model-written programs run in the project's sandbox
  (the shared pool, or the ``sdpo sandbox serve`` socket named by ``SDPO_SANDBOX_SOCKET``), never in a
  plain subprocess, and a response is solved when it passes every test (the sparse reward).
- :func:`context_gaps`: for each problem, the log-probability of the reference solution and of a failed
  near-miss attempt under the student context (the problem) and the two teacher contexts SDPO builds
  ("Correct solution: ..." and failing-test feedback). SDPO learns from ``log p(y | teacher) - log p(y |
  student)``: it should be > 0 for the correct solution and < 0 for the wrong attempt.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from statistics import mean

import torch

from sdpo.envs.code import evaluate_many, extract_code
from sdpo.models import chat_ids
from sdpo.toy.corpus import CorpusExample, encode, feedback_text, near_miss, teacher_messages
from sdpo.toy.generator import ToyProblem


def extract_program(response: str) -> str | None:
    """The program the code environment would run (:func:`sdpo.envs.code.extract_code`), or None."""
    return extract_code(response)


def solved_many(responses: Sequence[str], problems: Sequence[ToyProblem], *, sandbox=None) -> list[bool]:
    """Whether each response passes every test of its problem, judged by ``sdpo.envs.code.evaluate_many`` in
    the sandbox (``sandbox``: a ``SandboxPool`` / ``SandboxClient``; default the shared pool)."""
    results = evaluate_many(list(responses), [p.tests() for p in problems], sparse=True, sandbox=sandbox)
    return [r.reward == 1.0 for r in results]


def solved(response: str, problem: ToyProblem, *, sandbox=None) -> bool:
    """Whether the response's program passes every test of the problem (run in the sandbox)."""
    return solved_many([response], [problem], sandbox=sandbox)[0]


@torch.no_grad()
def generate(model, tokenizer, problems: Sequence[ToyProblem], *, samples: int = 1, temperature: float = 0.0,
             max_new_tokens: int = 160, batch_size: int = 16, seed: int = 0) -> list[list[str]]:
    """``samples`` responses per problem (greedy when ``temperature == 0``)."""
    torch.manual_seed(seed)
    prompts = [chat_ids(tokenizer, p.messages()) for p in problems for _ in range(samples)]
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(x)) + x for x in chunk])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk])
        kwargs = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 \
            else {"do_sample": False}
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **kwargs)
        texts += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return [texts[i * samples:(i + 1) * samples] for i in range(len(problems))]


def solve_rates(model, tokenizer, problems: Sequence[ToyProblem], *, samples: int = 4,
                temperature: float = 1.0, seed: int = 0) -> dict[str, float]:
    """``greedy``: fraction solved greedily; ``sampled``: mean fraction of ``samples`` samples that solve;
    ``any``: fraction with at least one solving sample."""
    greedy = generate(model, tokenizer, problems, seed=seed)
    sampled = generate(model, tokenizer, problems, samples=samples, temperature=temperature, seed=seed)
    g = solved_many([r[0] for r in greedy], problems)
    flat = solved_many([x for rs in sampled for x in rs], [p for p, rs in zip(problems, sampled, strict=True)
                                                           for _ in rs])
    s = [flat[i * samples:(i + 1) * samples] for i in range(len(problems))]
    return {"greedy": mean(g), "sampled": mean(mean(x) for x in s), "any": mean(any(x) for x in s),
            "n": len(problems), "samples": samples}


@torch.no_grad()
def response_logprobs(model, tokenizer, examples: Sequence[CorpusExample], batch_size: int = 16) -> list[float]:
    """Sum of log p(response tokens incl. end-of-turn | messages) for each example."""
    out: list[float] = []
    for start in range(0, len(examples), batch_size):
        enc = [encode(tokenizer, ex) for ex in examples[start:start + batch_size]]
        width = max(len(x) for x, _ in enc)
        ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x, _ in enc])
        labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in enc])
        mask = (torch.arange(width)[None, :] < torch.tensor([len(x) for x, _ in enc])[:, None]).long()
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), dim=-1)
        tgt = labels[:, 1:]
        tok = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (tgt != -100)
        out += tok.sum(-1).tolist()
    return out


def context_gaps(model, tokenizer, problems: Sequence[ToyProblem], *, seed: int = 0) -> dict[str, float]:
    """Mean log-probs (nats per sequence) of the solution and of a failed near-miss under the student and the
    two teacher contexts, and the teacher-minus-student gaps SDPO relies on."""
    rng = random.Random(seed)
    rows = []
    for p in problems:
        wrong = near_miss(p, rng)
        if wrong is not None:
            rows.append((p, wrong))
    sol: dict[str, list[float]] = {"student": [], "demo": [], "feedback": []}
    bad: dict[str, list[float]] = {"student": [], "demo": [], "feedback": []}
    for target, store in (("solution", sol), ("wrong", bad)):
        exs: dict[str, list[CorpusExample]] = {k: [] for k in store}
        for p, wrong in rows:
            y = p.solution() if target == "solution" else wrong.response
            fb = feedback_text(p, wrong)
            exs["student"].append(CorpusExample("direct", p.messages(), y, p.id))
            exs["demo"].append(CorpusExample("solution", teacher_messages(p, solution=p.solution()), y, p.id))
            exs["feedback"].append(CorpusExample("feedback", teacher_messages(p, feedback=fb), y, p.id))
        for k in store:
            store[k] = response_logprobs(model, tokenizer, exs[k])
    res: dict[str, float] = {"n": len(rows)}
    for name, store in (("solution", sol), ("wrong", bad)):
        for k in store:
            res[f"logp/{name}/{k}"] = mean(store[k]) if rows else float("nan")
        for k in ("demo", "feedback"):
            res[f"gap/{name}/{k}"] = mean(a - b for a, b in zip(store[k], store["student"], strict=True)) \
                if rows else float("nan")
    return res


def report(model, tokenizer, easy: Sequence[ToyProblem], hard: Sequence[ToyProblem], *, samples: int = 4,
           seed: int = 0) -> dict[str, dict[str, float]]:
    """Solve rates and context gaps on held-out easy and hard problems."""
    return {
        "easy": {**solve_rates(model, tokenizer, easy, samples=samples, seed=seed),
                 **context_gaps(model, tokenizer, easy, seed=seed)},
        "hard": {**solve_rates(model, tokenizer, hard, samples=samples, seed=seed),
                 **context_gaps(model, tokenizer, hard, seed=seed)},
    }


def format_report(rep: dict[str, dict[str, float]]) -> str:
    keys = sorted({k for v in rep.values() for k in v})
    lines = [f"{'metric':34s}" + "".join(f"{name:>12s}" for name in rep)]
    for k in keys:
        lines.append(f"{k:34s}" + "".join(f"{rep[name].get(k, float('nan')):12.3f}" for name in rep))
    return "\n".join(lines)
