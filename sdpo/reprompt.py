"""Teacher contexts: re-prompting each sampled attempt with a successful sibling and/or environment feedback
(SDPO, arXiv 2601.20802, Sec. 3 "self-teacher"; reference: lasgroup/SDPO ``ray_trainer._build_teacher_message``).

Pipeline for one training batch of B sampled attempts:

1. :func:`build_teacher_messages` turns (prompt, response, reward, group, feedback) into one
   :class:`TeacherContext` per sample: the chat messages the teacher sees, and whether the sample is distilled.
2. :func:`tokenize_teacher_inputs` renders those messages with the chat template and lays out one batch
   ``[left-padded prompt | right-padded response]``, the layout of the student's own batch
   (:func:`sdpo.forward.student_inputs`), so that :mod:`sdpo.forward` runs teacher and student alike.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from sdpo.config import SelfDistillationConfig
from sdpo.forward import ResponseBatch, response_logits, student_inputs  # noqa: F401 - importable from here too
from sdpo.models import chat_ids

Message = dict[str, str]

_THINK_RE = re.compile(r"<think>.*?</think>\s*", flags=re.DOTALL)


@dataclass(frozen=True)
class TeacherContext:
    """The teacher's view of one sample.

    messages: chat messages (``role``/``content`` dicts) the teacher is conditioned on.
    uses_solution: a successful sibling's response is shown as a demonstration.
    uses_feedback: the environment's feedback on this attempt is shown.
    demonstration: the batch index of the sibling whose response is shown (None without a demonstration).
    """

    messages: list[Message]
    uses_solution: bool
    uses_feedback: bool
    demonstration: int | None = None

    @property
    def distill_mask(self) -> bool:
        """Whether the sample is distilled (the reference's ``self_distillation_mask``): a re-prompt happened."""
        return self.uses_solution or self.uses_feedback


def strip_thinking(text: str) -> str:
    """Remove every ``<think>…</think>`` block and the whitespace that follows it."""
    return _THINK_RE.sub("", text)


def _check_lengths(**columns: Sequence) -> int:
    sizes = {name: len(col) for name, col in columns.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"build_teacher_messages: per-sample inputs differ in length: {sizes}")
    return next(iter(sizes.values()))


def _successes(rewards: Sequence[float], cfg: SelfDistillationConfig) -> list[bool]:
    return [float(r) >= cfg.success_reward_threshold for r in rewards]


def _demonstration(i: int, group_ids: Sequence[Hashable], success: list[bool], responses: Sequence[str],
                   cfg: SelfDistillationConfig) -> tuple[int, str] | None:
    """(batch index, response) of the first successful sample of i's group in batch order (skipping i itself
    when ``dont_reprompt_on_self_success``), or None."""
    for j, gid in enumerate(group_ids):
        if gid != group_ids[i] or not success[j]:
            continue
        if j == i and cfg.dont_reprompt_on_self_success:
            continue
        demo = responses[j]
        return j, (strip_thinking(demo) if cfg.remove_thinking_from_demonstration else demo)
    return None


def _usable_feedback(fb: str | None) -> bool:
    """Feedback counts only if it has visible text: None, "" and whitespace-only strings are dropped (as the
    reference does)."""
    return isinstance(fb, str) and fb.strip() != ""


def build_teacher_messages(
    prompts: Sequence[list[Message]],
    responses: Sequence[str],
    rewards: Sequence[float],
    group_ids: Sequence[Hashable],
    feedback: Sequence[str | None],
    cfg: SelfDistillationConfig,
) -> list[TeacherContext]:
    """One :class:`TeacherContext` per sample (reference semantics, lasgroup/SDPO).

    prompts: [B] chat message lists; the last message is the question the re-prompt wraps.
    responses: [B] decoded responses; rewards: [B] scalar rewards; group_ids: [B] group keys (samples of one
    question share a key); feedback: [B] environment feedback string or None.

    Rules: success = reward >= ``cfg.success_reward_threshold``. The demonstration for sample i is the response
    of the first successful sample of its group in batch order, excluding i itself when
    ``cfg.dont_reprompt_on_self_success`` (then the next successful one, if any); with
    ``cfg.remove_thinking_from_demonstration`` ``<think>…</think>`` plus following whitespace is removed.
    Feedback is used only if it is a string with non-whitespace text (None, "" and whitespace-only feedback are
    dropped), ``cfg.include_environment_feedback`` is set, and (not
    ``cfg.environment_feedback_only_without_solution`` or there is no demonstration). When a demonstration
    or feedback is used the messages are all but the last prompt message plus one user message
    ``reprompt_template.format(prompt=<last message content>, solution=<section or "">,
    feedback=<section or "">)``; otherwise the original prompt, and the sample is not distilled.
    """
    n = _check_lengths(prompts=prompts, responses=responses, rewards=rewards, group_ids=group_ids,
                       feedback=feedback)
    success = _successes(rewards, cfg)
    contexts: list[TeacherContext] = []
    for i in range(n):
        if not prompts[i]:
            raise ValueError(f"build_teacher_messages: prompt {i} has no messages")
        found = _demonstration(i, group_ids, success, responses, cfg)
        demo = found[1] if found is not None else None
        use_feedback = (
            cfg.include_environment_feedback
            and _usable_feedback(feedback[i])
            and (not cfg.environment_feedback_only_without_solution or demo is None)
        )
        if demo is None and not use_feedback:
            contexts.append(TeacherContext([dict(m) for m in prompts[i]], False, False))
            continue
        solution = cfg.solution_template.format(successful_previous_attempt=demo) if demo is not None else ""
        fb = cfg.feedback_template.format(feedback_raw=feedback[i]) if use_feedback else ""
        text = cfg.reprompt_template.format(prompt=prompts[i][-1]["content"], solution=solution, feedback=fb)
        messages = [dict(m) for m in prompts[i][:-1]] + [{"role": "user", "content": text}]
        contexts.append(TeacherContext(messages, demo is not None, use_feedback,
                                       found[0] if found is not None else None))
    return contexts


def reprompt_metrics(
    contexts: Sequence[TeacherContext],
    rewards: Sequence[float],
    group_ids: Sequence[Hashable],
    feedback: Sequence[str | None],
    cfg: SelfDistillationConfig,
) -> dict[str, float]:
    """Batch fractions of the re-prompting step (names as in the reference, namespaced ``sdpo/``).

    success_group_fraction: groups with at least one successful sample / groups.
    success_sample_fraction: samples whose teacher context shows a demonstration / samples (the reference's
        ``num_with_solution / batch_size``; not the fraction of successful samples, see ``reward/*``).
    feedback_available_fraction: samples with usable feedback (non-whitespace text) / samples; 0 when
        ``cfg.include_environment_feedback`` is off (as the reference, which then never looks at feedback).
    feedback_used_fraction: samples whose teacher context shows feedback / samples.
    reprompt_sample_fraction: distilled samples (``distill_mask``) / samples.
    """
    n = _check_lengths(contexts=contexts, rewards=rewards, group_ids=group_ids, feedback=feedback)
    if n == 0:
        raise ValueError("reprompt_metrics: empty batch")
    success = _successes(rewards, cfg)
    groups = set(group_ids)
    groups_with_success = {g for g, s in zip(group_ids, success, strict=True) if s}
    return {
        "sdpo/success_group_fraction": len(groups_with_success) / len(groups),
        "sdpo/success_sample_fraction": sum(c.uses_solution for c in contexts) / n,
        "sdpo/feedback_available_fraction": (sum(_usable_feedback(f) for f in feedback) / n
                                             if cfg.include_environment_feedback else 0.0),
        "sdpo/feedback_used_fraction": sum(c.uses_feedback for c in contexts) / n,
        "sdpo/reprompt_sample_fraction": sum(c.distill_mask for c in contexts) / n,
    }


TeacherBatch = ResponseBatch
"""The teacher's input; the same layout as the student's (:func:`student_inputs`)."""


def truncate_prompt(ids: list[int], max_len: int, truncation: str) -> list[int]:
    """Cut a prompt to ``max_len`` tokens, with the meaning of HF ``truncation_side`` (as the reference, which sets
    ``tokenizer.truncation_side = reprompt_truncation``): "right" drops tokens from the end (keeps the
    beginning; note this can cut the generation prompt), "left" drops tokens from the beginning (keeps the end),
    "error" raises ValueError."""
    if len(ids) <= max_len:
        return ids
    if truncation == "right":
        return ids[:max_len]
    if truncation == "left":
        return ids[len(ids) - max_len:]
    if truncation == "error":
        raise ValueError(
            f"max_reprompt_len: a teacher prompt has {len(ids)} tokens > max_reprompt_len={max_len}; raise "
            "max_reprompt_len or set reprompt_truncation to 'left' or 'right'"
        )
    raise ValueError(f"reprompt_truncation: got {truncation!r}; allowed values are 'right', 'left', 'error'")


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither a pad nor an eos token id")
    return int(pad)


def tokenize_teacher_inputs(tokenizer, contexts: Sequence[TeacherContext], response_ids: torch.Tensor,
                            response_mask: torch.Tensor, max_reprompt_len: int,
                            truncation: str) -> TeacherBatch:
    """Teacher input for every sample: chat template with the generation prompt (thinking off, as
    :func:`sdpo.models.chat_ids`), prompt part truncated to ``max_reprompt_len`` tokens (see
    :func:`truncate_prompt`), left-padded, then the response tokens [B, T] appended.

    The trainer takes the teacher's ``logits[:, P-1 : P-1+T]`` with ``P = batch.response_start`` (done by
    :func:`sdpo.forward.response_logits`), which line up index-for-index with the student's response logits.
    """
    prompt_ids = [truncate_prompt(chat_ids(tokenizer, c.messages), max_reprompt_len, truncation)
                  for c in contexts]
    return student_inputs(prompt_ids, response_ids, response_mask, _pad_id(tokenizer))
