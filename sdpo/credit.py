"""What the self-teacher says about each attempt, token by token (SDPO, arXiv 2601.20802, Sec. 3), for showing.

SDPO's learning signal is dense. At every response position t the teacher (the model re-prompted with a
successful sibling and/or the attempt's feedback, :mod:`sdpo.reprompt`) and the student (the model on the plain
question) each give the sampled token y_t a log-probability; the difference
``log π_T(y_t | x, feedback, y<t) - log π_S(y_t | x, y<t)`` is the token's advantage in the token-mode gradient,
and where it is most negative the teacher would rather have written something else. :func:`token_credit`
computes, for the attempts of one round and the teacher contexts the update uses:

- per token (the first ``max_tokens``): the decoded piece and the student's and teacher's log-probabilities of
  the sampled token, at the distillation temperature (``SelfDistillationConfig.temperature``);
- at the ``positions`` tokens where teacher - student is lowest (and negative), the teacher's ``alternatives``
  most likely tokens with their probabilities.

It only reads the models (no gradient, eval mode) and returns bounded, rounded plain data (typed dataclasses)
ready to be stored; nothing calls it when the view is off (``SolveConfig.token_view``). Cost when on: one
student and one teacher forward per distilled attempt over its first ``max_tokens`` tokens, holding that many
positions' logits of each side at once (the float32 log-softmax is taken a block of positions at a time).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from sdpo.callbacks import StopRequested
from sdpo.config import SelfDistillationConfig
from sdpo.forward import response_logits, student_inputs
from sdpo.reprompt import TeacherContext, _pad_id, tokenize_teacher_inputs
from sdpo.rollout.base import Rollout
from sdpo.teacher import eval_mode

# Bounds of what one attempt's view holds (it is stored with the job).
MAX_TOKENS = 1024  # response tokens shown
POSITIONS = 8  # most-disagreeing positions listed
ALTERNATIVES = 5  # teacher's top tokens at each of them
MAX_CONTEXT_CHARS = 12_000  # the teacher's re-prompt message as stored (head and tail kept)
DIGITS = 4  # log-probabilities and probabilities are rounded to this many decimals
CHUNK_ELEMENTS = 1 << 24  # float32 log-softmax values computed at once (64 MB)


@dataclass(frozen=True)
class Alternative:
    """One of the teacher's most likely tokens at a position: its text and probability."""

    token: str
    prob: float


@dataclass(frozen=True)
class Disagreement:
    """A position where the teacher gives the sampled token much less probability than the student did.

    position: 0-based token position in the response. token: the sampled token's text.
    student_logprob, teacher_logprob: of the sampled token. teacher_top: the teacher's most likely tokens there.
    """

    position: int
    token: str
    student_logprob: float
    teacher_logprob: float
    teacher_top: list[Alternative] = field(default_factory=list)

    @property
    def delta(self) -> float:
        return self.teacher_logprob - self.student_logprob


@dataclass(frozen=True)
class TokenCredit:
    """The per-token view of one attempt.

    tokens: decoded pieces of the first ``len(tokens)`` response tokens (joined, they give the response text; a
        token that completes a multi-byte character carries it, the tokens before it are "").
    student_logprobs, teacher_logprobs: [len(tokens)] log-probabilities of each sampled token.
    disagreements: the most-disagreeing positions, lowest teacher - student first.
    total_tokens: the response's length in tokens (more than ``len(tokens)`` when the view was cut).
    temperature: the distillation temperature the log-probabilities are taken at.
    """

    tokens: list[str]
    student_logprobs: list[float]
    teacher_logprobs: list[float]
    disagreements: list[Disagreement]
    total_tokens: int
    temperature: float = 1.0

    @property
    def mean_delta(self) -> float:
        """Mean teacher - student log-probability over the tokens shown (0 for an empty response)."""
        n = len(self.tokens)
        return sum(t - s for s, t in zip(self.student_logprobs, self.teacher_logprobs, strict=True)) / n if n else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "mean_delta": round(self.mean_delta, DIGITS)}


def token_pieces(tokenizer, ids: Sequence[int]) -> list[str]:
    """The text each token adds to the decoded response, special tokens included (incremental decoding: a
    byte-level token that ends inside a multi-byte character adds "" and the token completing it adds the
    character)."""
    pieces: list[str] = []
    start = done = 0  # decode from ``start``; the text of ids[start:done] is already emitted
    for i in range(len(ids)):
        before = tokenizer.decode(ids[start:done], skip_special_tokens=False)
        now = tokenizer.decode(ids[start:i + 1], skip_special_tokens=False)
        if now.endswith("\ufffd") and i + 1 < len(ids):
            pieces.append("")  # an incomplete character: wait for the token that completes it
            continue
        pieces.append(now[len(before):])
        start, done = done, i + 1
    return pieces


def clip_text(text: str, limit: int = MAX_CONTEXT_CHARS) -> str:
    """``text`` when it has at most ``limit`` characters, else its head and tail with the cut named."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    return f"{text[:head]}\n\n[… {len(text) - limit:,} characters not shown …]\n\n{text[len(text) - tail:]}"


def sampled_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature)[t, ids[t]] for logits [T, V] and ids [T] -> [T] float32, a block of
    positions at a time (never a whole [T, V] float32 copy)."""
    rows = max(1, CHUNK_ELEMENTS // max(1, logits.shape[-1]))
    out = [torch.log_softmax(logits[i:i + rows].float() / temperature, dim=-1)
           .gather(1, ids[i:i + rows, None]).squeeze(1) for i in range(0, logits.shape[0], rows)]
    return torch.cat(out)


def _round(x: float) -> float:
    return round(float(x), DIGITS) if math.isfinite(x) else float(x)


@torch.no_grad()
def token_credit(model, teacher, tokenizer, rollouts: Sequence[Rollout], contexts: Sequence[TeacherContext],
                 sd: SelfDistillationConfig, *, max_tokens: int = MAX_TOKENS, positions: int = POSITIONS,
                 alternatives: int = ALTERNATIVES, should_stop: Callable[[], bool] | None = None,
                 ) -> list[TokenCredit | None]:
    """The per-token view of each attempt (None for an attempt whose teacher context has neither a
    demonstration nor feedback: it is not distilled, its teacher is the student).

    model: the policy (the student, on each rollout's own prompt). teacher: an :mod:`sdpo.teacher` teacher
    (``logits(batch)``: response-aligned logits, no grad). contexts: ``build_teacher_messages`` of the same
    rollouts; the teacher prompt is truncated as the update truncates it (``sd.max_reprompt_len``,
    ``sd.reprompt_truncation``). should_stop: asked before each attempt (``sdpo.callbacks.StopRequested``).
    """
    if len(rollouts) != len(contexts):
        raise ValueError(f"token_credit: {len(rollouts)} rollouts for {len(contexts)} teacher contexts")
    device = next(model.parameters()).device
    temp = float(sd.temperature)
    out: list[TokenCredit | None] = []
    for rollout, ctx in zip(rollouts, contexts, strict=True):
        if not ctx.distill_mask:
            out.append(None)
            continue
        if should_stop is not None and should_stop():
            raise StopRequested
        ids = list(rollout.response_ids[:max_tokens])
        if not ids:
            out.append(TokenCredit([], [], [], [], total_tokens=0, temperature=temp))
            continue
        # 1. Student and teacher logits at the response positions (one attempt at a time: bounded memory).
        resp = torch.tensor([ids], dtype=torch.long)
        mask = torch.ones_like(resp)
        s_batch = student_inputs([rollout.prompt_ids], resp, mask, _pad_id(tokenizer)).to(device)
        t_batch = tokenize_teacher_inputs(tokenizer, [ctx], resp, mask, sd.max_reprompt_len,
                                          sd.reprompt_truncation).to(device)
        with eval_mode(model):
            s_logits = response_logits(model, s_batch)[0]
        t_logits = teacher.logits(t_batch)[0]
        # 2. Log-probabilities of the sampled tokens (float32, at the distillation temperature).
        target = torch.tensor(ids, dtype=torch.long, device=device)
        ls = sampled_logprobs(s_logits, target, temp)
        lt = sampled_logprobs(t_logits, target, temp)
        del s_logits
        # 3. Where the teacher disagrees most: the lowest teacher - student differences below 0, with the
        #    teacher's own most likely tokens there.
        delta = lt - ls
        k = min(positions, len(ids))
        worst = torch.topk(-delta, k).indices.tolist() if k else []
        pieces = token_pieces(tokenizer, ids)
        disagreements = []
        for pos in worst:
            if float(delta[pos]) >= 0:
                break
            lt_pos = torch.log_softmax(t_logits[pos].float() / temp, dim=-1)
            top = torch.topk(lt_pos, min(alternatives, lt_pos.shape[-1]))
            disagreements.append(Disagreement(
                position=pos, token=pieces[pos] or tokenizer.decode([ids[pos]], skip_special_tokens=False),
                student_logprob=_round(ls[pos]), teacher_logprob=_round(lt[pos]),
                teacher_top=[Alternative(tokenizer.decode([int(t)], skip_special_tokens=False), _round(math.exp(v)))
                             for v, t in zip(top.values.tolist(), top.indices.tolist(), strict=True)]))
        del t_logits
        out.append(TokenCredit(tokens=pieces, student_logprobs=[_round(x) for x in ls.tolist()],
                               teacher_logprobs=[_round(x) for x in lt.tolist()], disagreements=disagreements,
                               total_tokens=len(rollout.response_ids), temperature=temp))
    return out


def context_text(ctx: TeacherContext) -> str:
    """The teacher's re-prompt as stored: its last (user) message, bounded (``clip_text``); "" when the attempt
    is not distilled (the teacher then sees the plain question)."""
    return clip_text(ctx.messages[-1]["content"]) if ctx.distill_mask and ctx.messages else ""
