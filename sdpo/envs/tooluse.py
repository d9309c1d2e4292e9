"""Tool-use environment (ToolAlpaca; paper Sec. 5, "learning without rich feedback").

A response calls tools in the ReAct format the prompt asks for::

    Thought: ...
    Action: getExchangeRates
    Action Input: {"base": "USD", "symbols": "CAD"}

The ground truth (a row's ``answer``) is a JSON list of ``{"Action": name, "Action_Input": json-string}``.
As in the lasgroup/SDPO reference scorer, the reward is 1.0 when

1. the multiset of action names in the response equals the multiset of ground-truth actions, and
2. the *merged* action inputs are equal: all ``Action Input`` JSON objects of a side are merged in order
   into one dict (later keys overwrite earlier ones) and the two dicts are compared with ``==``.

Note (inherited from the reference, kept for comparability): because inputs are merged, two calls that
differ only in a key the last call overwrites are not told apart.

Parsing is more robust than the reference's regexes: an action name is the first token after ``Action:``
(so ``[Optional]updateUserProfile`` is kept whole), and an input is decoded with a real JSON decoder, so
nested objects and braces inside strings work. An ``Action Input`` that is not a JSON object contributes
nothing to the merged dict (recorded in ``details['input_errors']``).

Feedback lists the mismatch (missing / unexpected actions, differing input keys). It is off by default
because it reveals the ground truth; pass ``feedback=True`` to enable it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from sdpo.envs.base import Score

# "Action: name" / "Action Input: {...}", tolerating markdown emphasis such as "**Action:** name".
_ACTION_RE = re.compile(r"(?<![\w])Action[ \t*]*:[ \t*]*([^\s*]+)")
_INPUT_RE = re.compile(r"(?<![\w])Action[ \t]+Input[ \t*]*:[ \t*]*")
_FORMAT_RE = re.compile(r"Action[ \t*]*:.*\n[ \t*]*Action[ \t]+Input[ \t*]*:")
_DECODER = json.JSONDecoder()
_FEEDBACK_VALUE_CHARS = 200


def parse_ground_truth(answer: object) -> list[tuple[str, dict[str, Any]]]:
    """Ground truth as (action, input dict) pairs; ``answer`` is the row's JSON string or its parsed list (any
    other value is refused).

    Raises ValueError naming the problem if the answer is not a list of {"Action", "Action_Input"} objects.
    An ``Action_Input`` that is not a JSON object decodes to ``{}`` (as in the reference).
    """
    items = answer
    if isinstance(answer, str):
        try:
            items = json.loads(answer)
        except json.JSONDecodeError as e:
            raise ValueError(f"answer: not valid JSON ({e})") from None
    if not isinstance(items, list):
        raise ValueError(f"answer: expected a list of actions, got {type(items).__name__}")
    calls: list[tuple[str, dict[str, Any]]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("Action"), str):
            raise ValueError(f"answer[{i}]: expected an object with a string 'Action'")
        raw = item.get("Action_Input", {})
        if isinstance(raw, str):
            try:
                raw = json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError:
                raw = {}
        calls.append((item["Action"].strip(), raw if isinstance(raw, dict) else {}))
    return calls


def _clean_name(token: str) -> str:
    return token.strip().strip("`*\"'").rstrip(".,;")


def parse_response(response: str) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """Actions, decoded action inputs and input decoding errors found in a response (in order)."""
    actions = [name for m in _ACTION_RE.finditer(response) if (name := _clean_name(m.group(1)))]
    inputs: list[dict[str, Any]] = []
    errors: list[str] = []
    for m in _INPUT_RE.finditer(response):
        text = response[m.end():].lstrip()
        if text.startswith("```"):  # tolerate a fenced block: ```json\n{...}\n```
            text = text.split("\n", 1)[1] if "\n" in text else ""
        try:
            value, _ = _DECODER.raw_decode(text)
        except json.JSONDecodeError as e:
            errors.append(f"Action Input at offset {m.start()}: not valid JSON ({e.msg})")
            continue
        if isinstance(value, dict):
            inputs.append(value)
        else:
            errors.append(f"Action Input at offset {m.start()}: expected a JSON object")
    return actions, inputs, errors


def merge_inputs(inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge input dicts in order; later keys overwrite earlier ones (reference semantics)."""
    merged: dict[str, Any] = {}
    for d in inputs:
        merged.update(d)
    return merged


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= _FEEDBACK_VALUE_CHARS else text[: _FEEDBACK_VALUE_CHARS - 3] + "..."


def _feedback(pred_actions: list[str], gt_actions: list[str], pred: dict[str, Any],
              gt: dict[str, Any], errors: list[str]) -> str:
    lines: list[str] = []
    if not pred_actions:
        lines.append("No tool call found; use the format 'Action: <tool>' then 'Action Input: <JSON object>'.")
    missing = Counter(gt_actions) - Counter(pred_actions)
    extra = Counter(pred_actions) - Counter(gt_actions)
    if missing:
        lines.append("Missing actions: " + ", ".join(sorted(missing.elements())))
    if extra:
        lines.append("Unexpected actions: " + ", ".join(sorted(extra.elements())))
    for key in sorted(set(gt) | set(pred)):
        if key not in pred:
            lines.append(f"Action input {key!r} is missing; expected {_short(gt[key])}")
        elif key not in gt:
            lines.append(f"Action input {key!r} is not expected (got {_short(pred[key])})")
        elif pred[key] != gt[key]:
            lines.append(f"Action input {key!r} is {_short(pred[key])}; expected {_short(gt[key])}")
    lines.extend(errors)
    return "\n".join(lines)


def score(response: str, answer: str | list[dict[str, Any]], *, feedback: bool = False) -> Score:
    """Reward 1.0 iff actions (as a multiset) and merged inputs match the ground truth (module docs).

    feedback: when True, a failing response gets a text listing the mismatch (it reveals the answer);
        when False (default) feedback is None. A correct response always gets None.
    details: ``pred_actions``, ``pred_inputs``, ``input_errors``, ``format_ok`` (an Action line followed by
        an Action Input line was found).
    """
    truth = parse_ground_truth(answer)
    gt_actions = [name for name, _ in truth]
    gt_inputs = merge_inputs([inp for _, inp in truth])
    pred_actions, inputs, errors = parse_response(response)
    pred_inputs = merge_inputs(inputs)
    correct = Counter(pred_actions) == Counter(gt_actions) and pred_inputs == gt_inputs
    text = None
    if feedback and not correct:
        text = _feedback(pred_actions, gt_actions, pred_inputs, gt_inputs, errors)
    return Score(
        reward=1.0 if correct else 0.0,
        feedback=text,
        passed=int(correct),
        total=1,
        details={
            "pred_actions": pred_actions,
            "pred_inputs": pred_inputs,
            "input_errors": errors,
            "format_ok": bool(_FORMAT_RE.search(response)),
        },
    )
