"""Test-time self-distillation on one hard problem, with the two baselines it is compared against (SDPO,
arXiv 2601.20802, the test-time discovery experiment).

``solve(problem, model, tokenizer, sampler, cfg, callbacks)`` spends an attempt budget on one problem and
stops at the first *discovery*: an attempt that passes every public test and then every hidden test (without
hidden tests the public tests decide). Strategies (``SolveConfig.strategy``):

- ``"sdpo"``: rounds of ``n`` attempts from the current policy; the public tests give reward and feedback;
  without a discovery the round's attempts become one SDPO batch for this one question (teacher contexts from
  the round's public successes as sibling demonstrations, and the tests' feedback), and one policy update of
  ``ppo_epochs`` epochs (PPO-style: the importance ratios of every epoch refer to the policy that sampled
  the round) of a LoRA adapter (or of all weights) follows; then the next round samples from the updated
  policy. A round whose teacher contexts hold neither a demonstration nor feedback carries no learning
  signal: it is not updated at all (the weights are left bit-for-bit unchanged), and neither is the round
  that spends the budget (no attempt would sample from the update).
- ``"best_of_k"``: the same rounds of sampling, never updated.
- ``"multiturn"``: one conversation that grows by one attempt per turn. ``multiturn_template``
  ``"feedback_only"`` appends all feedback so far to the question (one user message);
  ``"attempt_and_feedback"`` alternates the assistant's attempts with user feedback messages. The oldest
  history is dropped so that prompt + ``max_new_tokens`` fit in ``context_budget`` tokens (the question is
  always kept), like the reference's multi-turn baseline with a bounded context window.

Hidden tests: the reward is the public tests' (sparse), so an attempt that passes every public test but
fails a hidden one keeps reward 1 and is a sibling demonstration for ``sdpo`` (teacher contexts come from the
round's successes): it is the best evidence the round has. It also carries ``HIDDEN_FAIL_FEEDBACK``
(which says it was not accepted, without showing the hidden tests) as its feedback: its own teacher context
shows that feedback when no other sibling succeeded, and multi-turn shows it in the conversation.

Attempt numbering: attempts are numbered 0, 1, ... across the whole run; round ``r`` of the batched strategies
holds attempts ``r*n .. r*n + n - 1`` (the last round is clamped to the budget), a multi-turn turn is one
round of one attempt. ``Attempt.round`` is that round number, ``Attempt.index`` the position in the round.
Sampling seeds derive from ``cfg.seed`` and the number of the round's first attempt, so a run resumed with
``start_attempt`` at a round boundary samples what the uninterrupted run would have (exactly so for
``best_of_k``; for ``sdpo`` the LoRA adapter saved after each updated round in ``out_dir`` is reloaded, the
optimizer moments restart; a resumed ``multiturn`` conversation restarts empty).

What the teacher says (``sdpo`` with the SDPO loss): every round without a discovery reports, through
``callbacks.teacher``, one ``TeacherView`` per attempt before the update: the teacher context the update uses
(which sibling is the demonstration, whether the attempt's feedback is shown, or no teacher signal) and, with
``token_view``, the per-token view of ``sdpo.credit.token_credit`` (teacher minus student log-probabilities of
each token, and the teacher's preferred tokens where it disagrees most). The round that spends the budget is
reported too (its weights are not updated: ``ttt/updated`` is 0). The baselines have no teacher.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdpo import envs
from sdpo.adapters import apply_adapter, is_lora, load_adapter_weights, save_weights
from sdpo.callbacks import Attempt, Callbacks, StopRequested, TeacherView, stop_poll
from sdpo.config import ConfigError, SelfDistillationConfig, _choice, _number, build_dataclass
from sdpo.credit import context_text, token_credit
from sdpo.data.tasks import Task
from sdpo.envs.code import extract_code
from sdpo.models import chat_ids, default_model_path, load_model_and_tokenizer, resolve_device
from sdpo.precision import master_weights
from sdpo.reprompt import build_teacher_messages, strip_thinking
from sdpo.rollout.base import Rollout, SamplingParams
from sdpo.rollout.select import make_sampler
from sdpo.teacher import make_reference, make_teacher
from sdpo.update import (
    ScoredBatch,
    UpdateConfig,
    has_learning_signal,
    make_optimizer,
    policy_update,
    uses_teacher,
)

STRATEGIES = ("sdpo", "best_of_k", "multiturn")
MULTITURN_TEMPLATES = ("feedback_only", "attempt_and_feedback")

# Test-time defaults of the self-distillation block (see SolveConfig's docstring for why).
TTT_SELF_DISTILLATION: dict[str, Any] = {"alpha": 1.0, "distillation_topk": 20, "teacher_regularization": "live"}

HIDDEN_FAIL_FEEDBACK = (
    "Your code passed all the public tests, but it was not accepted: it fails on hidden tests. Check edge "
    "cases and the efficiency of your solution."
)
FEEDBACK_ONLY_HEADER = "\n\nThe following is feedback from your unsuccessful earlier attempts, oldest first:"
MULTITURN_SUFFIX = "\n\nCorrectly solve the original question."
MULTITURN_FEEDBACK_TURN = "The following is feedback from your unsuccessful earlier attempt:\n\n{feedback}"


def _ttt_self_distillation(overrides: dict[str, Any] | None = None) -> SelfDistillationConfig:
    return build_dataclass(SelfDistillationConfig, {**TTT_SELF_DISTILLATION, **(overrides or {})},
                           prefix="self_distillation.")


@dataclass
class SolveConfig(UpdateConfig):
    """A test-time solve of one problem. Inherits the update settings (loss, lr, ppo_epochs, self_distillation,
    ...) from UpdateConfig and the policy and sampling settings (adapter, LoRA, n, temperature, top_p, top_k,
    seed, sampler, device, dtype, ...) from ``sdpo.config.PolicyConfig``.

    strategy: "sdpo" | "best_of_k" | "multiturn" (module docstring).
    budget: attempts in all. n (inherited): attempts per round (sdpo / best_of_k; the last round is clamped to the
        budget). ppo_epochs (inherited): epochs of the policy update on each round's batch (sdpo only); every
        epoch's importance ratios and clips refer to the policy that sampled the round.
    max_new_tokens: as PolicyConfig's, with the paper's test-time default.
    multiturn_template: "feedback_only" | "attempt_and_feedback". context_budget: tokens of prompt + response
        the multi-turn conversation may use (the oldest history is dropped to fit).
    token_view: compute the per-token view of each distilled attempt (``sdpo.credit``; sdpo strategy with the
        SDPO loss): one more student and teacher forward per attempt and round; off, it costs nothing.
    sampler, sampler_batch_size, gpu_memory_utilization, device, dtype (inherited): used by ``solve_from_config``.

    Test-time defaults differ from training's where one question changes the trade-off:
    - loss "sdpo", self_distillation alpha 1.0 (reverse KL) with top-k 20 + tail: the reference's rich-feedback
      (LiveCodeBench) setting, which is what a coding problem with test feedback is.
    - teacher_regularization "live": a solve runs budget / n updates (8-32), far too few for an EMA teacher
      at rate 0.01-0.05 to leave the base model (0.99^16 = 0.85), and what the policy learns about this one
      problem should reach the teacher that reads the feedback; it also needs no second copy of the weights.
    - lr 1e-5: the reference's on-policy setting; one question gives a narrower signal than a 32-question
      training batch (lr 1e-6 there) but only a handful of steps are taken, so a larger step is needed.
    """

    strategy: str = "sdpo"
    budget: int = 64
    max_new_tokens: int = 4096
    multiturn_template: str = "feedback_only"
    context_budget: int = 16384
    token_view: bool = True
    self_distillation: SelfDistillationConfig = field(default_factory=_ttt_self_distillation)

    def __post_init__(self) -> None:
        if isinstance(self.self_distillation, dict):  # a partial block overrides the test-time defaults
            self.self_distillation = _ttt_self_distillation(self.self_distillation)
        super().__post_init__()
        _choice("strategy", self.strategy, STRATEGIES)
        for name in ("budget", "context_budget"):
            _number(name, getattr(self, name), lo=1, integer=True)
        _choice("multiturn_template", self.multiturn_template, MULTITURN_TEMPLATES)
        if not isinstance(self.token_view, bool):
            raise ConfigError("token_view", f"got {self.token_view!r}; expected true or false")
        if self.strategy == "sdpo" and self.loss in ("sc_sdpo", "sdpg"):
            raise ConfigError("loss", f"got {self.loss!r}; a solve updates on rounds that all fail (a success ends "
                              "it), where SC-SDPO's weight sqrt(p(1 - p)) and SDPG's positive-advantage gate are 0 "
                              "and nothing is learned; use 'sdpo', 'srpo', 'hybrid' or 'grpo'")
        if self.context_budget <= self.max_new_tokens:
            raise ConfigError("context_budget", f"got {self.context_budget}; must exceed max_new_tokens="
                              f"{self.max_new_tokens} (it holds the prompt and the response)")


@dataclass
class SolveResult:
    """Outcome of one solve.

    discovered_at: 1-based number of the discovering attempt, or None. solution: its extracted code.
    attempts_used: attempts counted against the budget (including the ``start_attempt`` skipped ones; at a
        discovery, the attempts after it in its round are not counted). rounds: one metric dict per round.
    adapter_path: where the adapted weights were saved (sdpo with ``out_dir``), else None.
    stopped: the run ended because ``callbacks.stop_requested()``.
    """

    strategy: str
    budget: int
    attempts_used: int = 0
    discovered_at: int | None = None
    solution: str | None = None
    rounds: list[dict[str, float]] = field(default_factory=list)
    adapter_path: str | None = None
    stopped: bool = False

    @property
    def discovered(self) -> bool:
        return self.discovered_at is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------
# Pieces the loops call
# ---------------------------------------------------------------------------------------------------

def round_seed(cfg: SolveConfig, first_attempt: int) -> int:
    """Sampling seed of the round whose first attempt is number ``first_attempt`` (0-based)."""
    return cfg.seed * 1_000_003 + first_attempt


def _sampling(cfg: SolveConfig, first_attempt: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                          top_k=cfg.top_k, seed=round_seed(cfg, first_attempt))


@dataclass
class _Scored:
    """One attempt after the public tests (and the hidden ones when it passed the public ones)."""

    rollout: Rollout
    code: str | None
    reward: float
    passed: int
    total: int
    feedback: str | None
    hidden_passed: int | None = None
    hidden_total: int | None = None
    has_hidden: bool = False

    @property
    def public_pass(self) -> bool:
        return self.total > 0 and self.passed == self.total

    @property
    def discovered(self) -> bool:
        if not self.public_pass:
            return False
        if not self.has_hidden:
            return True
        return self.hidden_total is not None and self.hidden_passed == self.hidden_total


def score_attempts(task, rollouts: list[Rollout], should_stop=None, code_feedback: str = "all_tests",
                   ) -> list[_Scored]:
    """Public tests for every attempt (sparse reward + feedback gathered as ``code_feedback`` says); hidden
    tests, in attempt order, for the attempts that pass all public tests, up to the first that passes them too
    (the later ones are never counted, so their hidden tests need not run). An attempt that fails a hidden test
    keeps its public reward and gets ``HIDDEN_FAIL_FEEDBACK`` (nothing of the hidden tests themselves, so they
    stop at their first failure). ``should_stop`` is asked
    before every sandbox run after the first (``StopRequested`` when it says stop)."""
    scores = envs.score_many([task] * len(rollouts), [r.text for r in rollouts],
                             [r.truncated for r in rollouts], sparse=True, code_feedback=code_feedback)
    has_hidden = task.hidden_tests is not None
    out = [_Scored(r, extract_code(r.text), s.reward, s.passed, s.total, s.feedback, has_hidden=has_hidden)
           for r, s in zip(rollouts, scores, strict=True)]
    if task.hidden_tests is None:
        return out
    for a in out:
        if a.public_pass:
            if should_stop is not None and should_stop():
                raise StopRequested
            h = envs.score(task, a.rollout.text, truncated=a.rollout.truncated, sparse=True,
                           tests=task.hidden_tests, code_feedback="first_failure")
            a.hidden_passed, a.hidden_total = h.passed, h.total
            if a.discovered:
                break
            a.feedback = HIDDEN_FAIL_FEEDBACK
    return out


def _attempt_record(a: _Scored, rnd: int, index: int, seconds: float, task_id: str | None) -> Attempt:
    return Attempt(round=rnd, index=index, response=a.rollout.text, code=a.code, reward=a.reward,
                   passed=a.passed, total=a.total, feedback=a.feedback, tokens=len(a.rollout.response_ids),
                   seconds=seconds, hidden_passed=a.hidden_passed, hidden_total=a.hidden_total, task_id=task_id)


def teacher_contexts(batch: ScoredBatch, cfg: UpdateConfig) -> list:
    """The teacher contexts of ``batch``'s samples, as the policy update builds them
    (``sdpo.reprompt.build_teacher_messages``)."""
    return build_teacher_messages(batch.prompts, [r.text for r in batch.rollouts], batch.rewards, batch.group_ids,
                                  batch.feedback, cfg.self_distillation)


def teacher_views(model, teacher, tokenizer, rollouts: list[Rollout], contexts: list, cfg: SolveConfig, rnd: int,
                  first_index: int, should_stop=None) -> list[TeacherView]:
    """One ``TeacherView`` per attempt of round ``rnd`` (the round's attempts are numbered from
    ``first_index``): its teacher context and, with ``cfg.token_view``, its per-token view."""
    credits = (token_credit(model, teacher, tokenizer, rollouts, contexts, cfg.self_distillation,
                            should_stop=should_stop) if cfg.token_view else [None] * len(rollouts))
    return [TeacherView(round=rnd, index=first_index + i, distilled=c.distill_mask,
                        demonstration=None if c.demonstration is None else first_index + c.demonstration,
                        feedback=c.uses_feedback, context=context_text(c), credit=credit)
            for i, (c, credit) in enumerate(zip(contexts, credits, strict=True))]


def prepare_policy(model, cfg: SolveConfig):
    """The trainable policy for ``strategy="sdpo"``: ``model`` itself when it already carries a LoRA adapter,
    else ``model`` with ``cfg.adapter`` applied (LoRA injects into the model's modules in place)."""
    if is_lora(model):
        return model
    return apply_adapter(model, cfg.adapter, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                         target_modules=cfg.lora_target_modules)


def _as_task(problem):
    if isinstance(problem, Task):
        if problem.kind != "code" or problem.tests is None:
            raise ValueError(f"problem: only code tasks with tests can be solved, got kind {problem.kind!r}")
        return problem
    return problem.to_task()


def _round_metrics(rnd: int, scored: list[_Scored], counted: int, discovered: bool, t: dict[str, float],
                   extra: dict[str, float]) -> dict[str, float]:
    rewards = [a.reward for a in scored[:counted]]
    lengths = [len(a.rollout.response_ids) for a in scored[:counted]]
    return {
        "round": float(rnd), "ttt/attempts": float(counted),
        "reward/mean": sum(rewards) / len(rewards), "reward/max": max(rewards),
        "ttt/public_pass_fraction": sum(a.public_pass for a in scored[:counted]) / counted,
        "ttt/discovered": float(discovered),
        "response/length_mean": sum(lengths) / len(lengths),
        "response/truncated_fraction": sum(a.rollout.truncated for a in scored[:counted]) / counted,
        **extra, **t,
    }


# ---------------------------------------------------------------------------------------------------
# The loops
# ---------------------------------------------------------------------------------------------------

def solve(problem, model, tokenizer, sampler, cfg: SolveConfig, callbacks: Callbacks | None = None, *,
          out_dir: str | Path | None = None, start_attempt: int = 0) -> SolveResult:
    """Spend ``cfg.budget`` attempts on ``problem`` (a ``Problem`` or a code ``Task``) with ``cfg.strategy``.

    model / tokenizer: the policy (``sdpo`` applies ``cfg.adapter`` unless the model already has a LoRA
    adapter; the sampler is pointed at the trainable model). sampler: a ``Sampler`` over that model.
    callbacks: ``attempts`` after every round, ``teacher`` (sdpo: what the teacher says about them, before the
    update), ``metrics(round, ...)``, ``checkpoint`` for the saved weights,
    ``stop_requested()`` checked before every round, between sandbox runs and before every micro-batch of an
    update (the sampler asks it while generating when it was built with ``should_stop``, as
    ``solve_from_config`` does). A round interrupted by a stop reports nothing more, and weights interrupted
    mid-update are not saved. start_attempt: attempts already spent (a resumed job).
    """
    _number("start_attempt", start_attempt, lo=0, integer=True)
    if cfg.strategy == "multiturn":
        return _solve_multiturn(problem, tokenizer, sampler, cfg, callbacks or Callbacks(),
                                start_attempt=start_attempt)
    callbacks = callbacks or Callbacks()
    poll = stop_poll(callbacks)
    task = _as_task(problem)
    result = SolveResult(cfg.strategy, cfg.budget, attempts_used=min(start_attempt, cfg.budget))
    out = Path(out_dir) if out_dir is not None else None

    # 0. Policy, teacher, optimizer (sdpo only; the baselines never touch the weights).
    learn = cfg.strategy == "sdpo"
    teacher = optimizer = reference = None
    if learn:
        model = prepare_policy(model, cfg)
        if start_attempt and out is not None and is_lora(model) and (out / "adapter").is_dir():
            load_adapter_weights(model, out / "adapter")
        sampler.update_weights(model)
        teacher = make_teacher(cfg.self_distillation, model) if uses_teacher(cfg.loss) else None
        reference = make_reference(model, teacher) if cfg.kl_coef else None
        optimizer, _ = make_optimizer(model, cfg)

    attempt = start_attempt
    updating = False  # a stop inside a policy update leaves weights that are not saved
    try:
        while attempt < cfg.budget:
            if callbacks.stop_requested():
                result.stopped = True
                break
            # 1. This round's attempts: up to the next multiple of n, clamped to the budget.
            rnd = attempt // cfg.n
            k = min((rnd + 1) * cfg.n, cfg.budget) - attempt
            t0 = time.perf_counter()

            # 2. Sample k attempts from the current policy (seed from the round's first attempt number).
            rollouts = sampler.generate([task.messages], k, _sampling(cfg, attempt))
            t1 = time.perf_counter()

            # 3. Public tests: reward + feedback; 4. hidden tests for public passes, up to the first discovery.
            scored = score_attempts(task, rollouts, poll, cfg.code_feedback)
            t2 = time.perf_counter()
            hit = next((i for i, a in enumerate(scored) if a.discovered), None)
            counted = k if hit is None else hit + 1

            # 5. Report the counted attempts.
            per_attempt = (t2 - t0) / k
            callbacks.attempts([_attempt_record(a, rnd, attempt - rnd * cfg.n + i, per_attempt, task.id)
                                for i, a in enumerate(scored[:counted])])
            result.attempts_used = attempt + counted
            timing = {"perf/sample_s": t1 - t0, "perf/score_s": t2 - t1}
            extra: dict[str, float] = {}

            # 6. A discovery ends the run.
            if hit is not None:
                result.discovered_at = attempt + hit + 1
                result.solution = scored[hit].code
            # 7. sdpo: one update of cfg.ppo_epochs epochs (the old log-probs, hence every epoch's IS
            #    ratios, are the sampling policy's) on this round's batch when it carries a learning
            #    signal and attempts remain to sample from the updated policy.
            elif learn:
                batch = ScoredBatch(prompts=[task.messages] * k, rollouts=rollouts, rewards=[a.reward for a in scored],
                                    feedback=[a.feedback for a in scored], group_ids=[0] * k)
                contexts = teacher_contexts(batch, cfg)
                updated = attempt + counted < cfg.budget and has_learning_signal(batch, cfg, contexts)
                extra["ttt/updated"] = float(updated)
                # 7a. What the teacher sees and says about each attempt, with the weights that sampled them.
                if teacher is not None:
                    extra["sdpo/reprompt_sample_fraction"] = sum(c.distill_mask for c in contexts) / k
                    callbacks.teacher(teacher_views(model, teacher, tokenizer, rollouts, contexts, cfg, rnd,
                                                    attempt - rnd * cfg.n, poll))
                    extra["perf/token_view_s"] = time.perf_counter() - t2
                t3 = time.perf_counter()
                if updated:
                    updating = True
                    extra.update(policy_update(model, optimizer, teacher, tokenizer, batch, cfg,
                                               seed=round_seed(cfg, attempt), should_stop=poll,
                                               reference=reference))
                    if teacher is not None and extra["update/optimizer_steps"] > 0:  # not after skipped steps only
                        teacher.update(model, master_weights(optimizer))
                    sampler.update_weights(model)
                    if out is not None and getattr(model, "peft_config", None) is not None:
                        save_weights(model, tokenizer, out)  # small; lets a resumed job continue from here
                    updating = False
                extra["perf/update_s"] = time.perf_counter() - t3

            # 8. Round metrics.
            attempt += counted
            result.attempts_used = attempt
            metrics = _round_metrics(rnd, scored, counted, hit is not None, timing, extra)
            result.rounds.append(metrics)
            callbacks.metrics(rnd, metrics)
            if hit is not None:
                break
    except StopRequested:  # asked to stop while sampling, scoring or updating
        result.stopped = True

    # 9. Save the adapted weights.
    if learn and out is not None and not updating:
        path, kind = save_weights(model, tokenizer, out)
        result.adapter_path = str(path)
        callbacks.checkpoint(result.attempts_used, str(path), kind)
    return result


def multiturn_messages(question: list[dict[str, str]], history: list[tuple[str, str]], template: str,
                       ) -> list[dict[str, str]]:
    """The conversation for the next turn. ``history``: (response, feedback) of earlier attempts, oldest first.

    feedback_only: the question's last (user) message gets every feedback appended, numbered; the attempts
    themselves are not shown. attempt_and_feedback: after the question, each attempt as an assistant message
    followed by its feedback as a user message.
    """
    if not history:
        return [dict(m) for m in question]
    if template == "feedback_only":
        sections = "".join(f"\n\nFeedback on attempt {i + 1}:\n\n{fb}" for i, (_, fb) in enumerate(history))
        text = question[-1]["content"] + FEEDBACK_ONLY_HEADER + sections + MULTITURN_SUFFIX
        return [dict(m) for m in question[:-1]] + [{"role": "user", "content": text}]
    if template == "attempt_and_feedback":
        msgs = [dict(m) for m in question]
        for response, fb in history:
            msgs.append({"role": "assistant", "content": response})
            msgs.append({"role": "user", "content": MULTITURN_FEEDBACK_TURN.format(feedback=fb) + MULTITURN_SUFFIX})
        return msgs
    raise ValueError(f"multiturn_template: got {template!r}; allowed values are {MULTITURN_TEMPLATES}")


def fit_history(tokenizer, question: list[dict[str, str]], history: list[tuple[str, str]], template: str,
                max_prompt_tokens: int) -> tuple[list[dict[str, str]], int]:
    """The conversation with the longest suffix of ``history`` whose chat-templated prompt has at most
    ``max_prompt_tokens`` tokens (the question alone is returned when nothing fits); also returns how many
    history entries were kept. The prompt length grows with every entry kept, so a binary search finds it."""
    def size(m: int) -> int:
        return len(chat_ids(tokenizer, multiturn_messages(question, history[len(history) - m:], template)))

    lo, hi = 0, len(history)  # invariant: the best m is in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if size(mid) <= max_prompt_tokens:
            lo = mid
        else:
            hi = mid - 1
    return multiturn_messages(question, history[len(history) - lo:], template), lo


def _solve_multiturn(problem, tokenizer, sampler, cfg: SolveConfig, callbacks: Callbacks, *,
                     start_attempt: int) -> SolveResult:
    """One conversation, one attempt per turn (= round), feedback appended after each failure."""
    task = _as_task(problem)
    room = cfg.context_budget - cfg.max_new_tokens
    question = len(chat_ids(tokenizer, task.messages))
    if question > room:
        raise ConfigError("context_budget", f"got {cfg.context_budget}; the question alone has {question} prompt "
                          f"tokens and the response max_new_tokens={cfg.max_new_tokens}: raise context_budget to at "
                          f"least {question + cfg.max_new_tokens} (or lower max_new_tokens)")
    result = SolveResult(cfg.strategy, cfg.budget, attempts_used=min(start_attempt, cfg.budget))
    history: list[tuple[str, str]] = []
    poll = stop_poll(callbacks)
    attempt = start_attempt
    try:
        while attempt < cfg.budget:
            if callbacks.stop_requested():
                result.stopped = True
                break
            t0 = time.perf_counter()
            # 1. The conversation so far, truncated (oldest first) to fit the context budget.
            messages, kept = fit_history(tokenizer, task.messages, history, cfg.multiturn_template,
                                         cfg.context_budget - cfg.max_new_tokens)
            # 2. One attempt.
            rollouts = sampler.generate([messages], 1, _sampling(cfg, attempt))
            t1 = time.perf_counter()
            # 3. Public tests, then hidden tests when it passes them.
            a = score_attempts(task, rollouts, poll, cfg.code_feedback)[0]
            t2 = time.perf_counter()
            # 4. Report it.
            callbacks.attempts([_attempt_record(a, attempt, 0, t2 - t0, task.id)])
            metrics = _round_metrics(attempt, [a], 1, a.discovered,
                                     {"perf/sample_s": t1 - t0, "perf/score_s": t2 - t1},
                                     {"multiturn/history_kept": float(kept),
                                      "multiturn/history_dropped": float(len(history) - kept),
                                      "multiturn/prompt_tokens": float(len(rollouts[0].prompt_ids))})
            result.rounds.append(metrics)
            callbacks.metrics(attempt, metrics)
            attempt += 1
            result.attempts_used = attempt
            # 5. A discovery ends the run; otherwise the attempt and its feedback join the conversation.
            if a.discovered:
                result.discovered_at, result.solution = attempt, a.code
                break
            history.append((strip_thinking(a.rollout.text), a.feedback or HIDDEN_FAIL_FEEDBACK))
    except StopRequested:  # asked to stop while sampling or scoring
        result.stopped = True
    return result


def _engine_len(model, context_budget: int) -> int:
    """The vLLM engine's max_model_len: the context budget, capped by the model's own context length."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(context_budget, limit) if isinstance(limit, int) and limit > 0 else context_budget


def solve_from_config(problem, cfg: SolveConfig, callbacks: Callbacks | None = None, *,
                      model_path: str | Path | None = None, out_dir: str | Path | None = None,
                      start_attempt: int = 0) -> SolveResult:
    """Load the model (``model_path``, default ``sdpo.models.default_model_path()``) on ``cfg.device`` in
    ``cfg.dtype``, apply the adapter (sdpo), build the sampler (``cfg.sampler``, asking
    ``callbacks.stop_requested()`` while it generates) and ``solve``."""
    path = str(model_path or default_model_path())
    model, tokenizer = load_model_and_tokenizer(path, dtype=cfg.dtype, device=resolve_device(cfg.device))
    adapter = "full"
    if cfg.strategy == "sdpo":
        model = prepare_policy(model, cfg)
        adapter = cfg.adapter
    sampler = make_sampler(cfg.sampler, model, tokenizer, batch_size=cfg.sampler_batch_size, adapter=adapter,
                           should_stop=stop_poll(callbacks),
                           model_path=path, gpu_memory_utilization=cfg.gpu_memory_utilization,
                           max_model_len=_engine_len(model, cfg.context_budget))
    try:
        return solve(problem, model, tokenizer, sampler, cfg, callbacks, out_dir=out_dir,
                     start_attempt=start_attempt)
    finally:
        sampler.close()  # frees a vLLM engine's GPU memory and work dir (no-op for HF)
