"""One prepared GPU check: the CUDA path of SDPO Studio measured in one command, everything reported at once.

    python3 bench/gpu.py --budget-s 420 --out gpu.json     # on a machine with one CUDA GPU, from the repo root
    python3 bench/gpu.py --smoke --out /tmp/gpu.json       # the same code paths on CPU with tiny shapes

Runs from a checkout without installing it (the repo root is put on ``sys.path``) and imports only ``sdpo`` /
``sdpo_sandbox`` and what they need: torch, transformers, tokenizers, peft, safetensors, PyYAML (no gradio,
celery, sqlalchemy, typer; jinja2 renders the chat template). Models are random-initialised from Qwen3-style configs (no download); the tokenizer
is the tiny model's byte-level BPE (``sdpo.tiny.train_tokenizer``, 2,048 entries) while the models keep
Qwen3's 151,936-row vocabulary, as a real checkpoint's embedding is larger than its tokenizer.

Parts (``--parts``: which, in the order given; default all four, run as update, loss, resume, ttt: part 3
last, its sandbox and long generations being the likeliest to stall):

1. ``update``: an SDPO and a GRPO update step (and SDPO with ``fused_lm_head``) on the same scored batch
   (8 rollouts x 1,024 response tokens; 2 successes, so every sample's teacher context holds a sibling
   demonstration), the reference's rich-feedback settings (top-k 20 + tail, alpha 1, IS clip 2, EMA teacher
   0.01, micro-batch 1, one optimizer step), full fine-tuning (bf16 compute, float32 masters from
   ``sdpo.precision``) and LoRA, on the Qwen3-0.6B and Qwen3-1.7B shapes: time, peak memory, tokens/s, the
   SDPO/GRPO ratio, and the time of the teacher forwards alone.
2. ``loss``: the SDPO top-k loss (k = 100 + tail, V = 151,936, 4,096 tokens, bf16), ours against the
   reference-style computation (materialised log-softmax of both sides), and the fused-from-hidden path against
   materialised logits (``bench/loss.py``'s inputs and implementations): time, peak memory, differences.
3. ``ttt``: HF-sampler generation throughput (8 x 1,024 tokens); the code sandbox scoring 8 programs (verdicts
   checked; strong isolation needs root, weak is tried when strong cannot start); one test-time SDPO round
   (``sdpo.ttt.solve``: sample n = 8, score in the sandbox, update), and SDPO/GRPO per step with generation.
4. ``resume``: ``sdpo.trainer.train`` for 3 steps with a checkpoint after step 2, then resumed from it: the
   resumed step 3 must reproduce the uninterrupted step 3 (its loss and rollouts; the weights and teacher after
   it are compared and reported), full (bf16 with float32 masters) and LoRA.

Every figure is a median of ``--reps`` timed repetitions after ``--warmup`` untimed ones (variants alternate
within a repetition). ``--budget-s`` caps the whole run: each part gets a share of the time left when it starts
and reports what it finished; a repetition that would not fit is not started. Prints progress lines, then one
markdown table, and writes JSON to ``--out`` after every part. Exit status 1 only when a part failed with an
error or a check failed (the error text is in the table and the JSON); 0 otherwise, also when the budget cut
parts short.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import inspect
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

GIB = 2**30
PARTS = ("update", "loss", "ttt", "resume")
#: Default order of execution: part 3 last, as its sandbox and long generations are the likeliest to stall.
ORDER = ("update", "loss", "resume", "ttt")
#: Modules of the service around the library, none of which this check may load.
SERVICE_MODULES = ("gradio", "celery", "sqlalchemy", "alembic", "typer", "backend", "app", "workers")
TITLES = {"update": "1 update step", "loss": "2 SDPO loss", "ttt": "3 generation + TTT", "resume": "4 resume"}
#: Share of the time left that a part gets when it starts (time a part leaves unused goes to the later ones).
SHARES = {"update": 0.30, "loss": 0.10, "ttt": 0.40, "resume": 0.20}

# Qwen3 shapes (the published configs' sizes; weights random). "smoke*" are the --smoke stand-ins.
QWEN3 = dict(vocab_size=151_936, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
             head_dim=128, tie_word_embeddings=True)
SHAPES: dict[str, dict[str, int | bool]] = {
    "0.6b": dict(QWEN3, hidden_size=1024, intermediate_size=3072),
    "1.7b": dict(QWEN3, hidden_size=2048, intermediate_size=6144),
    # opt-in (--shapes): full fine-tuning beside its EMA teacher needs about 130 GB in bf16 with float32 masters
    "4b": dict(QWEN3, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32),
    # part 4: a small model with the real vocabulary (the check is about CUDA state, not size)
    "resume": dict(QWEN3, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=64),
    "smoke": dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
}

PROMPT = [
    {"role": "system", "content": "You are an expert Python programmer. End your answer with the complete "
                                  "solution in a single ```python ... ``` code block."},
    {"role": "user", "content": "Read an integer n from standard input and print 2n. The input holds one line "
                                "with n (|n| <= 10^9); print the answer on one line."},
]
#: The test-time problem (stdin); the programs below are scored against it in the sandbox.
PROBLEM = {"title": "Double", "statement": "Read an integer n from standard input and print 2n.",
           "tests": {"inputs": ["3\n", "0\n", "-4\n", "1000000000\n", "7\n"],
                     "outputs": ["6\n", "0\n", "-8\n", "2000000000\n", "14\n"],
                     "testtype": "stdin", "time_limit": 4}}
CORRECT = ["```python\nn = int(input())\nprint(2 * n)\n```",
           "```python\nimport sys\nprint(int(sys.stdin.read()) * 2)\n```",
           "```python\nprint(int(input()) << 1)\n```"]
WRONG = ["```python\nprint(int(input()) + 2)\n```",                 # right on one test only
         "```python\nn = int(input())\nprint(n * n)\n```",           # wrong answers
         "```python\nprint(abs(int(input())) * 2)\n```",             # wrong on the negative test
         "```python\nn = int(input())\nraise ValueError(n)\n```",     # runtime error
         "```python\nprint(2 * int(input().split()[1]))\n```"]       # IndexError
#: Sandbox check: (response, expected sparse reward).
PROGRAMS = [(c, 1.0) for c in CORRECT] + [(w, 0.0) for w in WRONG]


# --------------------------------------------------------------------------------------------------
# Run state, budget, rows
# --------------------------------------------------------------------------------------------------

@dataclass
class Budget:
    deadline: float

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def fits(self, seconds: float) -> bool:
        return self.left() >= seconds


@dataclass
class Row:
    part: str
    case: str
    result: str
    status: str  # "ok" | "partial: ..." | "skipped: ..." | "unavailable: ..." | "error: ..." | "fail: ..."
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status.startswith(("error", "fail"))

    def to_dict(self) -> dict[str, Any]:
        return {"part": self.part, "case": self.case, "result": self.result, "status": self.status, **self.data}


class Run:
    """Arguments, device, clock, rows and the JSON file."""

    def __init__(self, args):
        self.args = args
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget_s
        self.device = torch.device(args.device)
        self.rows: list[Row] = []
        self.parts: dict[str, dict[str, Any]] = {}
        self.meta = environment(self.device)
        self.meta.update(argv=sys.argv[1:], smoke=args.smoke, budget_s=args.budget_s)
        self._tokenizer = None

    def log(self, msg: str) -> None:
        print(f"[gpu.py {time.monotonic() - self.t0:7.1f}s] {msg}", flush=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, part: str, case: str, result: str, status: str = "ok", **data) -> Row:
        row = Row(TITLES[part], case, result, status, data)
        self.rows.append(row)
        self.log(f"{row.part} | {case} | {result} | {status}")
        return row

    def error(self, part: str, case: str, exc: BaseException) -> Row:
        text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        return self.add(part, case, "", f"error: {text[:400]}", traceback=traceback.format_exc()[-6000:])

    def tokenizer(self):
        if self._tokenizer is None:
            from sdpo.tiny import train_tokenizer

            self._tokenizer = train_tokenizer(2048)
        return self._tokenizer

    def sorted_rows(self) -> list[Row]:
        """The rows in part order (1-4), whatever order the parts ran in."""
        order = {TITLES[p]: i for i, p in enumerate(PARTS)}
        return sorted(self.rows, key=lambda r: order[r.part])

    def to_json(self) -> dict[str, Any]:
        rows = self.sorted_rows()
        return {"meta": {**self.meta, "elapsed_s": round(time.monotonic() - self.t0, 1)}, "parts": self.parts,
                "rows": [r.to_dict() for r in rows], "table": table(rows)}

    def write(self) -> None:
        if self.args.out:
            out = Path(self.args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps(self.to_json(), indent=1, default=str) + "\n")
            tmp.replace(out)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions of what the script uses and the device it runs on (a missing package is named, not raised)."""
    meta: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "python": platform.python_version(),
                            "machine": platform.machine(), "cpus": os.cpu_count(), "device": str(device),
                            "torch_threads": torch.get_num_threads()}
    for mod in ("torch", "transformers", "tokenizers", "peft", "safetensors", "yaml", "triton"):
        try:
            meta[mod] = getattr(__import__(mod), "__version__", "?")
        except Exception as e:  # noqa: BLE001  (a broken install is reported, the parts that need it fail)
            meta[mod] = f"missing ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    bf16=torch.cuda.is_bf16_supported())
    return meta


def table(rows: list[Row]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "/").replace("\n", " ")

    lines = ["| part | case | result | status |", "|---|---|---|---|"]
    lines += [f"| {cell(r.part)} | {cell(r.case)} | {cell(r.result)} | {cell(r.status)} |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def allocated(device: torch.device) -> int | None:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def cleanup(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


@dataclass
class Timing:
    """One function's repetitions: times (s) and CUDA peak memory (bytes; None on CPU)."""

    times: list[float] = field(default_factory=list)
    warmup_s: float | None = None
    peak: int | None = None        # max_memory_allocated during the call
    peak_extra: int | None = None  # that minus what was allocated when it started
    result: Any = None             # the function's return value, last call

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    def to_dict(self) -> dict[str, Any]:
        return {"times_s": [round(t, 6) for t in self.times], "median_s": self.median, "warmup_s": self.warmup_s,
                "peak_gib": None if self.peak is None else self.peak / GIB,
                "peak_extra_gib": None if self.peak_extra is None else self.peak_extra / GIB}


def timed_call(fn: Callable[[], Any], device: torch.device) -> tuple[float, int | None, int | None, Any]:
    """(seconds, peak bytes, peak bytes over the start, result) of one call, synchronised."""
    sync(device)
    before = allocated(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    res = fn()
    sync(device)
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return dt, peak, (None if peak is None else peak - before), res


def measure(run: Run, budget: Budget, fns: dict[str, Callable[[], Any]], *, reps: int, warmup: int,
            label: str, estimate_s: float = 0.0) -> tuple[dict[str, Timing], str]:
    """``warmup`` untimed rounds, then up to ``reps`` timed rounds; each round runs every function once
    (alternating). A timed round starts only when it fits the budget, estimated from the last round (or
    ``estimate_s`` when there was none). Returns the timings and a status: "ok", "partial: budget (k/reps reps)"
    or "partial: budget (warm-up only)"."""
    out = {name: Timing() for name in fns}
    round_s = estimate_s
    for _ in range(warmup):
        round_s = 0.0
        for name, fn in fns.items():
            dt, peak, extra, res = timed_call(fn, run.device)
            out[name].warmup_s, out[name].peak, out[name].peak_extra, out[name].result = dt, peak, extra, res
            round_s += dt
    done = 0
    for _ in range(reps):
        if not budget.fits(round_s):
            break
        round_s = 0.0
        for name, fn in fns.items():
            dt, peak, extra, res = timed_call(fn, run.device)
            t = out[name]
            if peak is not None:  # the timed calls' peak (the warm-up's only until one ran)
                t.peak = peak if not t.times else max(t.peak, peak)
                t.peak_extra = extra if not t.times else max(t.peak_extra, extra)
            t.times.append(dt)
            t.result = res
            round_s += dt
        done += 1
        run.log(f"  {label}: rep {done}/{reps}: " + ", ".join(f"{n} {fmt_s(out[n].times[-1])}" for n in fns))
    if done == reps:
        return out, "ok"
    return out, (f"partial: budget ({done}/{reps} reps)" if done else
                 "partial: budget (warm-up only)" if warmup else "skipped: budget")


def figure(t: Timing) -> float | None:
    """The median, or the warm-up time when no repetition fitted the budget."""
    return t.median if t.median is not None else t.warmup_s


def fmt_s(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def rate(amount: float, seconds: float | None) -> float | None:
    return None if not seconds else amount / seconds


def fmt_rate(amount: float, seconds: float | None, unit: str = "tok/s") -> str:
    r = rate(amount, seconds)
    return "n/a" if r is None else f"{r:,.0f} {unit}"


def fmt_gib(b: int | None) -> str:
    return "n/a (CPU)" if b is None else f"{b / GIB:.2f} GiB"


# --------------------------------------------------------------------------------------------------
# Models and data
# --------------------------------------------------------------------------------------------------

def build_model(run: Run, shape: str, *, seed: int = 0, dtype: torch.dtype = torch.bfloat16):
    """A random-initialised Qwen3-style causal LM of ``SHAPES[shape]`` built on the run's device."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    tok = run.tokenizer()
    config = Qwen3Config(**SHAPES[shape], bos_token_id=None, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    try:
        with torch.device(run.device):  # initialised where it runs: seconds for 1.7B parameters on a GPU
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001  (a transformers version that cannot build under a device context)
        if run.device.type == "cpu":
            raise
        run.log(f"building on {run.device} failed ({type(e).__name__}: {e}); building on the CPU instead")
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(run.device)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.eval()
    return model


def shape_for(run: Run, shape: str) -> str:
    return "smoke" if run.args.smoke else shape


def _source_text() -> str:
    """Deterministic code-like text for responses and demonstrations (stdlib source)."""
    import argparse as a
    import collections
    import textwrap

    return "\n".join(inspect.getsource(m) for m in (a, collections, textwrap))


def scored_batch(tok, n: int, tokens: int, vocab: int):
    """n rollouts of one question, each exactly ``tokens`` response tokens (cut at the length limit, as a
    random model's are), rewards 1 for samples 0 and n/2 (each success has the other as demonstration, each
    failure the first), feedback on the failures (not shown: a demonstration exists)."""
    from sdpo.models import chat_ids
    from sdpo.rollout.base import Rollout
    from sdpo.update import ScoredBatch

    prompt_ids = chat_ids(tok, PROMPT)
    ids = tok.encode(_source_text(), add_special_tokens=False)
    lp = -math.log(vocab)  # a random model's token log-prob: the rollout-correction ratio is about 1
    rollouts = []
    for i in range(n):
        start = (i * tokens) % max(1, len(ids) - tokens)
        resp = ids[start:start + tokens]
        rollouts.append(Rollout(prompt_ids=list(prompt_ids), response_ids=resp, text=tok.decode(resp),
                                logprobs=[lp] * len(resp), truncated=True, prompt_index=0))
    rewards = [1.0 if i in (0, n // 2) else 0.0 for i in range(n)]
    feedback = [None if r else "Wrong answer on test 3: expected 6, got 5." for r in rewards]
    return ScoredBatch([PROMPT] * n, rollouts, rewards, feedback, [0] * n)


def update_configs(micro: int):
    """The reference's rich-feedback update (configs/paper/rich_feedback_sdpo.yaml) for one question's group."""
    from sdpo.config import SelfDistillationConfig
    from sdpo.update import UpdateConfig

    sd = SelfDistillationConfig(distillation_topk=20, distillation_add_tail=True, alpha=1.0, is_clip=2.0,
                                loss_agg_mode="seq-mean-token-mean-all", success_reward_threshold=0.5,
                                teacher_regularization="ema", teacher_update_rate=0.01)
    common = dict(lr=1e-6, weight_decay=0.01, max_grad_norm=1.0, self_distillation=sd, micro_batch_size=micro,
                  rollout_correction_threshold=2.0, norm_adv_by_std=False)
    return {"grpo": UpdateConfig(loss="grpo", **common), "sdpo": UpdateConfig(loss="sdpo", **common),
            "sdpo_fused": UpdateConfig(loss="sdpo", fused_lm_head=True, **common)}


# --------------------------------------------------------------------------------------------------
# Part 1: SDPO vs GRPO update steps
# --------------------------------------------------------------------------------------------------

def part_update(run: Run, budget: Budget) -> None:
    a = run.args
    tok = run.tokenizer()
    for shape in a.shapes:
        batch = scored_batch(tok, a.n, a.tokens, int(SHAPES[shape_for(run, shape)]["vocab_size"]))
        for adapter in ("full", "lora"):
            case = f"{shape} {adapter}"
            if budget.left() <= 0:
                run.add("update", case, "", "skipped: budget")
                continue
            try:
                _update_case(run, budget, shape, adapter, batch)
            except Exception as e:  # noqa: BLE001  (one case's failure, e.g. out of memory, keeps the others)
                run.error("update", case, e)
            cleanup(run.device)


def _update_case(run: Run, budget: Budget, shape: str, adapter: str, batch) -> None:
    from sdpo.adapters import apply_adapter
    from sdpo.precision import master_weights
    from sdpo.teacher import make_teacher
    from sdpo.trainer import make_optimizer
    from sdpo.update import policy_update

    a = run.args
    tok = run.tokenizer()
    cfgs = update_configs(a.micro)
    case = f"{shape} {adapter}"
    run.log(f"update: building {case} ({shape_for(run, shape)} shape)")
    model = apply_adapter(build_model(run, shape_for(run, shape)), adapter)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    before = allocated(run.device)
    teacher = make_teacher(cfgs["sdpo"].self_distillation, model)
    teacher_bytes = None if before is None else allocated(run.device) - before
    optimizer, _ = make_optimizer(model, cfgs["grpo"])
    last: dict[str, dict[str, float]] = {}

    def step(variant: str) -> Callable[[], dict[str, float]]:
        cfg = cfgs[variant]

        def go() -> dict[str, float]:
            m = policy_update(model, optimizer, None if variant == "grpo" else teacher, tok, batch, cfg, seed=0)
            if variant != "grpo" and m["update/optimizer_steps"] > 0:
                teacher.update(model, master_weights(optimizer))  # the trainer's step 7
            last[variant] = m
            return m
        return go

    variants = [v for v in ("grpo", "sdpo", "sdpo_fused") if v in a.variants]
    timings, status = measure(run, budget, {v: step(v) for v in variants}, reps=a.reps, warmup=a.warmup,
                              label=f"update {case}")
    resident = allocated(run.device)
    tokens = sum(len(r.response_ids) for r in batch.rollouts)
    base = figure(timings["grpo"]) if "grpo" in timings else None
    for v in variants:
        t, m = timings[v], last.get(v, {})
        s = figure(t)
        finite = all(math.isfinite(m.get(k, 0.0)) for k in ("loss", "grad_norm")) and \
            "update/skipped_nonfinite" not in m
        mem = "peak n/a on CPU" if t.peak is None else f"peak {fmt_gib(t.peak)} (step +{fmt_gib(t.peak_extra)})"
        result = (f"{fmt_s(s)}/step, {fmt_rate(tokens, s)}, {mem}, loss {m.get('loss', float('nan')):.4g}, "
                  f"grad norm {m.get('grad_norm', float('nan')):.3g}")
        row_status = status if finite else "fail: non-finite loss or gradient (a skipped optimizer step)"
        run.add("update", f"{case} {v}", result, row_status, shape=shape, adapter=adapter, variant=v,
                params=params, trainable=trainable, response_tokens=tokens, tokens_per_s=rate(tokens, s),
                optimizer=type(optimizer).__name__, metrics=m, **t.to_dict())
    if base and all(figure(timings[v]) for v in variants):
        ratios = {v: figure(timings[v]) / base for v in variants if v != "grpo"}
        text = ", ".join(f"{v}/grpo {r:.3f}" for v, r in ratios.items())
        held = "" if resident is None else (f"; resident {fmt_gib(resident)} incl. the EMA teacher's "
                                            f"{fmt_gib(teacher_bytes)} (GRPO needs no teacher)")
        run.add("update", f"{case} ratio", f"{text} (update only; CPU 1.52-1.61; paper incl. generation "
                f"1.058 / 1.171); {type(optimizer).__name__}, {trainable / 1e6:,.4g}M of {params / 1e6:,.4g}M "
                f"parameters trained{held}", status, shape=shape, adapter=adapter, ratios=ratios,
                resident_gib=None if resident is None else resident / GIB,
                teacher_gib=None if teacher_bytes is None else teacher_bytes / GIB)
    # Where SDPO's extra time goes: the teacher forwards alone (no grad, micro-batches as in the update).
    if "sdpo" in timings and budget.left() > 0:
        fwd = _teacher_forwards(run, teacher, tok, batch, cfgs["sdpo"])
        t, st = measure(run, budget, {"teacher": fwd}, reps=a.reps, warmup=1, label=f"teacher {case}")
        s, sd_s = figure(t["teacher"]), figure(timings["sdpo"])
        share = s / sd_s if s and sd_s else None
        run.add("update", f"{case} teacher forwards", f"{fmt_s(s)} = "
                f"{'n/a' if share is None else f'{share:.0%}'} of the SDPO step (the no-grad teacher forwards of "
                "the batch alone)", st, shape=shape, adapter=adapter, share_of_sdpo_step=share,
                **t["teacher"].to_dict())


def _teacher_forwards(run: Run, teacher, tok, batch, cfg) -> Callable[[], None]:
    from sdpo.reprompt import ResponseBatch, build_teacher_messages, tokenize_teacher_inputs

    sd = cfg.self_distillation
    contexts = build_teacher_messages(batch.prompts, [r.text for r in batch.rollouts], batch.rewards,
                                      batch.group_ids, batch.feedback, sd)
    ids = torch.tensor([r.response_ids for r in batch.rollouts])
    t_batch = tokenize_teacher_inputs(tok, contexts, ids, torch.ones_like(ids), sd.max_reprompt_len,
                                      sd.reprompt_truncation)
    micro = cfg.micro_batch_size

    start = t_batch.response_start
    chunks = []
    for i in range(0, len(ids), micro):  # rows of a micro-batch, without the columns that pad all of them
        rows = slice(i, i + micro)
        cut = start - max(1, int(t_batch.attention_mask[rows, :start].sum(-1).max()))
        chunks.append(ResponseBatch(t_batch.input_ids[rows, cut:], t_batch.attention_mask[rows, cut:],
                                    t_batch.position_ids[rows, cut:], start - cut).to(run.device))

    def go() -> None:
        for mb in chunks:
            teacher.logits(mb)
    return go


# --------------------------------------------------------------------------------------------------
# Part 2: the SDPO loss
# --------------------------------------------------------------------------------------------------

def _bench_loss():
    """bench/loss.py as a module (its inputs, reference-style baseline and one forward+backward)."""
    if "bench_loss" in sys.modules:
        return sys.modules["bench_loss"]
    spec = importlib.util.spec_from_file_location("bench_loss", ROOT / "bench" / "loss.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_loss"] = mod  # its dataclasses look their module up while the module executes
    spec.loader.exec_module(mod)
    return mod


LOSS_LABELS = {("logits", "baseline"): "sdpo_loss vs reference-style",
               ("hidden", "baseline"): "from_hidden vs logits+sdpo_loss",
               ("hidden", "reference"): "from_hidden vs logits+reference-style"}


def part_loss(run: Run, budget: Budget) -> None:
    a = run.args
    lb = _bench_loss()
    vocab, hidden = (8192, 64) if a.smoke else (151_936, int(SHAPES["0.6b"]["hidden_size"]))
    cases = [(kind, alpha) for kind in ("logits", "hidden") for alpha in (0.5, 1.0)]
    for kind, alpha in cases:
        case = f"{kind} T={a.loss_tokens} V={vocab} alpha={alpha}"
        if budget.left() <= 0:
            run.add("loss", case, "", "skipped: budget")
            continue
        try:
            _loss_case(run, budget, lb, kind, alpha, vocab, hidden, case)
        except Exception as e:  # noqa: BLE001
            run.error("loss", case, e)
        cleanup(run.device)


def _loss_case(run: Run, budget: Budget, lb, kind: str, alpha: float, vocab: int, hidden: int, case: str) -> None:
    a = run.args
    inp = lb.make_inputs(kind, a.loss_tokens, vocab, hidden, alpha, 100, str(run.device), torch.bfloat16)
    impls = ("ours",) + lb.BASELINES[kind]
    # peak memory: one call per implementation, the returned gradients alive (as bench/loss.py counts them)
    mem: dict[str, int | None] = {}
    for impl in impls:
        cleanup(run.device)
        _, _, mem[impl], _ = timed_call(lambda impl=impl: lb.run_once(impl, inp), run.device)
    cleanup(run.device)
    timings, status = measure(run, budget, {impl: (lambda impl=impl: lb.run_once(impl, inp)[0]) for impl in impls},
                              reps=a.reps, warmup=a.warmup, label=f"loss {case}")
    loss_o, grads_o = lb.run_once("ours", inp)
    for base in impls[1:]:
        loss_b, grads_b = lb.run_once(base, inp)
        loss_rel = abs(loss_o - loss_b) / max(abs(loss_b), 1e-30)
        grad_rel = max(lb._max_abs(go, gb) / max(lb._max_abs(gb), 1e-30)
                       for go, gb in zip(grads_o, grads_b, strict=True))
        del grads_b
        so, sb = figure(timings["ours"]), figure(timings[base])
        if not so or not sb:
            run.add("loss", f"{case}: {LOSS_LABELS[(kind, base)]}", "", status)
            continue
        mo, mb = mem["ours"], mem[base]
        mem_text = "n/a (CPU)" if mo is None else f"{mo / GIB:.2f} vs {mb / GIB:.2f} GiB ({mo / max(mb, 1):.2f}x)"
        ok = math.isfinite(loss_o) and math.isfinite(loss_b) and math.isfinite(grad_rel)
        run.add("loss", f"{case}: {LOSS_LABELS[(kind, base)]}",
                f"{fmt_s(so)} vs {fmt_s(sb)} ({so / sb:.2f}x); peak {mem_text}; loss rel diff {loss_rel:.1e}, "
                f"grad rel diff {grad_rel:.1e}", status if ok else "fail: non-finite loss or gradient",
                kind=kind, alpha=alpha, tokens=a.loss_tokens, vocab=vocab, hidden=hidden, topk=100,
                ours_s=so, base_s=sb, time_ratio=so / sb, ours_peak_gib=None if mo is None else mo / GIB,
                base_peak_gib=None if mb is None else mb / GIB, mem_ratio=None if mo is None else mo / max(mb, 1),
                loss=loss_o, loss_rel=loss_rel, grad_rel=grad_rel)


# --------------------------------------------------------------------------------------------------
# Part 3: generation, the sandbox, one test-time SDPO round
# --------------------------------------------------------------------------------------------------

def part_ttt(run: Run, budget: Budget) -> None:
    a = run.args
    shape = shape_for(run, a.gen_shape)
    model = None
    gen_s = None
    try:
        from sdpo.rollout.base import SamplingParams
        from sdpo.rollout.hf import HFSampler

        tok = run.tokenizer()
        run.log(f"ttt: building {a.gen_shape} ({shape})")
        model = build_model(run, shape)
        sampler = HFSampler(model, tok, batch_size=a.n)

        def gen(tokens: int, seed: int) -> int:
            rollouts = sampler.generate([PROMPT], a.n, SamplingParams(max_new_tokens=tokens, seed=seed))
            return sum(len(r.response_ids) for r in rollouts)

        # warm-up: a short generation, whose time per token estimates a full one for the budget
        short = min(16, a.gen_tokens)
        warm_s, _, _, _ = timed_call(lambda: gen(short, 1), run.device)
        seeds = iter(range(100, 200))
        timings, status = measure(run, budget, {"gen": lambda: gen(a.gen_tokens, next(seeds))}, reps=a.gen_reps,
                                  warmup=0, label="generation", estimate_s=warm_s * a.gen_tokens / short)
        t = timings["gen"]
        s, produced = t.median, t.result
        case = f"HF generation {a.gen_shape} {a.n} x {a.gen_tokens}"
        if s is None:
            run.add("ttt", case, f"a {short}-token warm-up took {fmt_s(warm_s)}", status)
        else:
            gen_s = s if produced == a.n * a.gen_tokens else None
            run.add("ttt", case, f"{produced:,} tokens in {fmt_s(s)}: {fmt_rate(produced, s)}, "
                    f"{s / a.gen_tokens * 1e3:.1f} ms per decoding step, peak {fmt_gib(t.peak)}", status,
                    shape=a.gen_shape, tokens=produced, tokens_per_s=rate(produced, s), **t.to_dict())
    except Exception as e:  # noqa: BLE001
        run.error("ttt", f"HF generation {a.gen_shape}", e)
    _with_generation_ratios(run, gen_s)

    isolation = None
    if budget.left() > 0:
        try:
            isolation = _sandbox_rows(run, budget)
        except Exception as e:  # noqa: BLE001
            run.error("ttt", "sandbox", e)
    else:
        run.add("ttt", "sandbox", "", "skipped: budget")

    case = f"TTT round {a.gen_shape} n={a.n} x {a.gen_tokens} (LoRA)"
    if model is None or budget.left() <= 0:
        run.add("ttt", case, "", "skipped: " + ("no model" if model is None else "budget"))
    else:
        try:
            _ttt_round(run, model, isolation, case)
        except Exception as e:  # noqa: BLE001
            run.error("ttt", case, e)
    del model
    cleanup(run.device)


def _with_generation_ratios(run: Run, gen_s: float | None) -> None:
    """SDPO/GRPO per step including generation, from part 1's update times on the generation's shape."""
    a = run.args
    if gen_s is None or a.tokens != a.gen_tokens:
        return
    for adapter in ("full", "lora"):
        upd = {r.data["variant"]: r.data.get("median_s") or r.data.get("warmup_s") for r in run.rows
               if r.data.get("shape") == a.gen_shape and r.data.get("adapter") == adapter
               and "variant" in r.data and not r.failed}
        if not upd.get("grpo") or not upd.get("sdpo"):
            continue
        ratio = (gen_s + upd["sdpo"]) / (gen_s + upd["grpo"])
        run.add("ttt", f"SDPO/GRPO incl. generation {a.gen_shape} {adapter}",
                f"{ratio:.3f} (HF generation {fmt_s(gen_s)} + update; paper, vLLM: 1.058 without / 1.171 with the "
                "code environment)", "ok", shape=a.gen_shape, adapter=adapter, ratio=ratio, generation_s=gen_s,
                update_s=upd)


def _sandbox_rows(run: Run, budget: Budget) -> str | None:
    """Score PROGRAMS (8 programs x 5 tests) in a fresh sandbox pool: start time, scoring time, verdicts.
    Strong isolation first; when it cannot start (no root, no namespaces), weak isolation, reported as such.
    Returns the isolation that worked (None: neither)."""
    from sdpo.envs.code import TestSpec, evaluate_many
    from sdpo_sandbox import SandboxConfig, SandboxError, SandboxPool, SandboxUnavailable

    a = run.args
    spec = TestSpec.parse(PROBLEM["tests"])
    responses = [p for p, _ in PROGRAMS]
    expected = [r for _, r in PROGRAMS]
    for isolation in ("strong", "weak"):
        case = f"sandbox ({isolation}): {len(responses)} programs x {len(spec)} tests"
        t0 = time.perf_counter()
        try:
            pool = SandboxPool(SandboxConfig(isolation=isolation))
        except (SandboxUnavailable, SandboxError, OSError, RuntimeError) as e:
            run.add("ttt", case, "", f"unavailable: {type(e).__name__}: {str(e)[:300]}")
            continue
        start_s = time.perf_counter() - t0
        try:
            def score(pool=pool) -> list[float]:
                return [r.reward for r in evaluate_many(responses, [spec] * len(responses), sparse=True,
                                                        code_feedback="all_tests", sandbox=pool)]

            timings, status = measure(run, budget, {"score": score}, reps=a.reps, warmup=1, label="sandbox")
        finally:
            pool.close()
        t = timings["score"]
        got = t.result
        ok = got == expected
        run.add("ttt", case, f"pool start {fmt_s(start_s)} ({pool.slots} slots); scoring {fmt_s(figure(t))}; "
                f"verdicts {'as expected' if ok else f'WRONG: {got} (expected {expected})'}",
                status if ok else "fail: wrong verdicts", isolation=isolation, slots=pool.slots, start_s=start_s,
                rewards=got, **t.to_dict())
        return isolation if ok else None
    return None


class _ProgramsSampler:
    """An HF sampler whose rollouts' texts are replaced by the check's wrong programs (token ids and log-probs
    stay the model's): a random model writes no code, so without this the round's scoring would never reach
    the sandbox. Every program fails, so the round ends without a discovery and updates on the feedback."""

    def __init__(self, inner):
        self.inner = inner

    def generate(self, prompts, n, params):
        rollouts = self.inner.generate(prompts, n, params)
        for i, r in enumerate(rollouts):
            r.text = WRONG[i % len(WRONG)]
        return rollouts

    def update_weights(self, model) -> None:
        self.inner.update_weights(model)

    def close(self) -> None:
        self.inner.close()


def _ttt_round(run: Run, model, isolation: str | None, case: str) -> None:
    from sdpo.callbacks import Callbacks
    from sdpo.data.problem import Problem
    from sdpo.rollout.hf import HFSampler
    from sdpo.ttt import SolveConfig, solve
    from sdpo_sandbox import default_pool

    a = run.args
    if isolation == "weak":  # the default pool of the solve (created on first use) then runs in weak isolation
        os.environ["SDPO_SANDBOX"] = "weak"
    if isolation is not None:
        default_pool()  # started here, so that the round's scoring time holds no pool start
    tok = run.tokenizer()
    cfg = SolveConfig.from_dict(dict(strategy="sdpo", budget=2 * a.n, n=a.n, max_new_tokens=a.gen_tokens,
                                     context_budget=a.gen_tokens + 4096, adapter="lora", micro_batch_size=a.micro,
                                     lr=1e-5, seed=0))
    rounds: list[dict[str, float]] = []
    # one round: stop is asked for once the first round has reported its metrics
    callbacks = Callbacks(on_metrics=lambda r, m: rounds.append(m), should_stop=lambda: bool(rounds))
    sampler = _ProgramsSampler(HFSampler(model, tok, batch_size=a.n))
    sync(run.device)
    t0 = time.perf_counter()
    res = solve(Problem.parse(PROBLEM), model, tok, sampler, cfg, callbacks)
    sync(run.device)
    total = time.perf_counter() - t0
    if not rounds:
        raise RuntimeError(f"the solve reported no round (stopped={res.stopped})")
    m = rounds[0]
    updated = m.get("ttt/updated") == 1.0 and m.get("update/optimizer_steps", 0.0) > 0
    finite = math.isfinite(m.get("loss", float("nan")))
    status = "ok" if updated and finite else "fail: " + ("no update" if not updated else "non-finite loss")
    run.add("ttt", case, f"round {fmt_s(total)}: sample {fmt_s(m.get('perf/sample_s'))}, score "
            f"{fmt_s(m.get('perf/score_s'))} (sandbox: {isolation or 'unavailable'}), update "
            f"{fmt_s(m.get('perf/update_s'))}, loss {m.get('loss', float('nan')):.4g}", status,
            round_s=total, isolation=isolation, metrics=m)


# --------------------------------------------------------------------------------------------------
# Part 4: save -> load -> continue
# --------------------------------------------------------------------------------------------------

def part_resume(run: Run, budget: Budget) -> None:
    with tempfile.TemporaryDirectory(prefix="sdpo-gpu-") as tmp:
        tmp = Path(tmp)
        try:
            model_dir, train_file = _resume_inputs(run, tmp)
        except Exception as e:  # noqa: BLE001
            run.error("resume", "model and data", e)
            return
        for adapter in ("full", "lora"):
            case = f"{adapter} (bf16{' + fp32 masters' if adapter == 'full' else ''})"
            if budget.left() <= 0:
                run.add("resume", case, "", "skipped: budget")
                continue
            try:
                _resume_case(run, tmp / adapter, model_dir, train_file, adapter, case)
            except Exception as e:  # noqa: BLE001
                run.error("resume", case, e)
            cleanup(run.device)


def _resume_inputs(run: Run, tmp: Path) -> tuple[Path, Path]:
    """A saved random model (+ tokenizer) and a 2-question code dataset in the lasgroup JSONL format."""
    model = build_model(run, shape_for(run, "resume"))
    model_dir = tmp / "model"
    model.save_pretrained(model_dir)
    run.tokenizer().save_pretrained(model_dir)
    del model
    rows = [{"idx": i, "kind": "code", "prompt": f"Read an integer n and print {k}n.",
             "tests": json.dumps({"inputs": ["3\n"], "outputs": [f"{3 * k}\n"], "testtype": "stdin"})}
            for i, k in enumerate((2, 3))]
    train_file = tmp / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model_dir, train_file


def _read_metrics(path: Path) -> dict[int, dict[str, float]]:
    return {r["step"]: r for r in map(json.loads, path.read_text().splitlines()) if r}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if a.keys() != b.keys():
        return float("inf")
    return max((float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel()), default=0.0)


def _resume_case(run: Run, tmp: Path, model_dir: Path, train_file: Path, adapter: str, case: str) -> None:
    from safetensors.torch import load_file

    from sdpo.trainer import TrainConfig, train

    a = run.args
    base = dict(model_path=str(model_dir), train_file=str(train_file), adapter=adapter, dtype="bfloat16",
                device=run.device.type, sampler="hf", loss="sdpo", max_steps=3, train_batch_size=2, n=4,
                max_new_tokens=8 if a.smoke else 32, max_prompt_len=512, micro_batch_size=4, lr=1e-4,
                progress=False, seed=0,
                self_distillation={"teacher_update_rate": 0.05, "distillation_topk": 20, "alpha": 1.0})
    t0 = time.perf_counter()
    first = train(TrainConfig.from_dict({**base, "out_dir": str(tmp / "a"), "save_every": 2}))
    ckpt = tmp / "a" / "checkpoints" / "step_2"
    second = train(TrainConfig.from_dict({**base, "out_dir": str(tmp / "b"), "resume_from": str(ckpt)}))
    total = time.perf_counter() - t0
    ma, mb = _read_metrics(tmp / "a" / "metrics.jsonl"), _read_metrics(tmp / "b" / "metrics.jsonl")
    if first.steps != 3 or second.steps != 3 or 3 not in ma or 3 not in mb or sorted(mb) != [3]:
        raise RuntimeError(f"unexpected runs: steps {first.steps}/{second.steps}, metrics steps {sorted(ma)} / "
                           f"{sorted(mb)}")
    la, lb_ = ma[3]["loss"], mb[3]["loss"]
    loss_rel = abs(la - lb_) / max(abs(la), 1e-12)
    same_rollouts = all(ma[3].get(k) == mb[3].get(k) for k in ("reward/mean", "response/length_mean"))
    weights = "adapter/adapter_model.safetensors" if adapter == "lora" else "model/model.safetensors"
    wa = load_file(str(tmp / "a" / "checkpoints" / "step_3" / weights))
    wb = load_file(str(tmp / "b" / "checkpoints" / "step_3" / weights))
    w_diff = _max_diff(wa, wb)
    sa = torch.load(tmp / "a" / "checkpoints" / "step_3" / "trainer_state.pt", map_location="cpu", weights_only=False)
    sb = torch.load(tmp / "b" / "checkpoints" / "step_3" / "trainer_state.pt", map_location="cpu", weights_only=False)
    t_diff = _max_diff(sa["teacher"]["weights"], sb["teacher"]["weights"])
    masters = {str(v.dtype).replace("torch.", "") for v in wa.values()}
    ok = loss_rel <= 1e-6 and same_rollouts and math.isfinite(la)
    result = (f"step-3 loss {la:.6g} uninterrupted vs {lb_:.6g} resumed (rel diff {loss_rel:.1e}); rollouts "
              f"{'equal' if same_rollouts else 'DIFFER'}; after step 3 max abs diff weights {w_diff:.1e}, teacher "
              f"{t_diff:.1e}; saved weights {'/'.join(sorted(masters))}; {fmt_s(total)} for both runs")
    run.add("resume", case, result, "ok" if ok else "fail: the resumed step differs from the uninterrupted one",
            adapter=adapter, loss_uninterrupted=la, loss_resumed=lb_, loss_rel=loss_rel, same_rollouts=same_rollouts,
            weights_max_diff=w_diff, teacher_max_diff=t_diff, saved_dtypes=sorted(masters),
            grad_norm=[ma[3].get("grad_norm"), mb[3].get("grad_norm")])


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------

PART_FNS: dict[str, Callable[[Run, Budget], None]] = {"update": part_update, "loss": part_loss, "ttt": part_ttt,
                                                     "resume": part_resume}


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Full description: the module docstring (bench/gpu.py) and bench/README.md.")
    p.add_argument("--smoke", action="store_true", help="the same code paths on CPU with tiny shapes")
    p.add_argument("--budget-s", type=float, default=None,
                   help="cap of the whole run in seconds (default 420; --smoke 600)")
    p.add_argument("--out", default=None, help="JSON file written after every part")
    p.add_argument("--parts", default=",".join(ORDER),
                   help=f"comma-separated parts, run in the order given (default {','.join(ORDER)})")
    p.add_argument("--device", default=None, choices=("cuda", "cpu"),
                   help="default: cuda when available; --smoke: cpu (--smoke --device cuda: the tiny shapes on the "
                        "GPU, a quick first look there)")
    p.add_argument("--shapes", default=None,
                   help="part 1's Qwen3 shapes, comma-separated: 0.6b, 1.7b, 4b (default 0.6b,1.7b; --smoke: 0.6b, "
                        "which is tiny there)")
    p.add_argument("--variants", default="grpo,sdpo,sdpo_fused", help="part 1's variants (grpo is always run)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per figure (default 5; --smoke 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed repetitions first (default 2; --smoke 1)")
    p.add_argument("--n", type=int, default=8, help="rollouts per question (parts 1 and 3)")
    p.add_argument("--tokens", type=int, default=None, help="response tokens per rollout (default 1024; --smoke 16)")
    p.add_argument("--micro", type=int, default=1, help="samples per forward/backward (the reference's 1)")
    p.add_argument("--loss-tokens", type=int, default=None, help="part 2's tokens (default 4096; --smoke 64)")
    p.add_argument("--gen-shape", default="0.6b", help="part 3's Qwen3 shape")
    p.add_argument("--gen-tokens", type=int, default=None, help="part 3's new tokens (default 1024; --smoke 16)")
    p.add_argument("--gen-reps", type=int, default=None, help="timed generations (default 2; --smoke 1)")
    args = p.parse_args(argv)
    smoke = args.smoke
    defaults = dict(budget_s=(600.0, 420.0), shapes=("0.6b", "0.6b,1.7b"), reps=(1, 5), warmup=(1, 2), tokens=(16, 1024), loss_tokens=(64, 4096),
                    gen_tokens=(16, 1024), gen_reps=(1, 2))
    for name, (s, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, s if smoke else full)
    if args.device is None:
        args.device = "cpu" if smoke or not torch.cuda.is_available() else "cuda"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False")
    args.parts = [x for x in args.parts.split(",") if x]
    if not args.parts or len(set(args.parts)) != len(args.parts):
        p.error(f"--parts: got {args.parts}; name each part once")
    args.shapes = [x for x in args.shapes.split(",") if x]
    args.variants = {"grpo"} | set(args.variants.split(","))
    qwen3 = ("0.6b", "1.7b", "4b")
    for name, got, allowed in (("--parts", args.parts, PARTS), ("--shapes", args.shapes, qwen3),
                               ("--variants", args.variants, ("grpo", "sdpo", "sdpo_fused")),
                               ("--gen-shape", [args.gen_shape], qwen3)):
        bad = [x for x in got if x not in allowed]
        if bad:
            p.error(f"{name}: unknown {bad}; choose from {', '.join(allowed)}")
    for name in ("reps", "n", "tokens", "micro", "loss_tokens", "gen_tokens", "gen_reps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: got {getattr(args, name)}; must be positive")
    if args.warmup < 0 or args.budget_s < 0:
        p.error("--warmup and --budget-s must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run = Run(args)
    run.log(f"bench/gpu.py: {'smoke, ' if args.smoke else ''}device {run.device}, budget {args.budget_s:.0f} s, "
            f"parts {','.join(args.parts)}; " + ", ".join(f"{k} {run.meta.get(k)}" for k in
                                                         ("gpu", "torch", "transformers", "peft", "python")))
    for i, name in enumerate(args.parts):
        rest = args.parts[i:]
        left = run.left()
        share = SHARES[name] / sum(SHARES[p] for p in rest)
        budget = Budget(time.monotonic() + max(0.0, left) * share)
        start = time.monotonic()
        n_rows = len(run.rows)
        run.log(f"part {TITLES[name]}: {max(0.0, left) * share:.0f} s of {max(0.0, left):.0f} s left")
        if left <= 0:
            run.add(name, "(all)", "", "skipped: budget")
        else:
            try:
                PART_FNS[name](run, budget)
            except Exception as e:  # noqa: BLE001  (one part's failure keeps the other parts' numbers)
                run.error(name, "(part)", e)
        cleanup(run.device)
        rows = run.rows[n_rows:]
        run.parts[name] = {"title": TITLES[name], "seconds": round(time.monotonic() - start, 1),
                           "budget_s": round(max(0.0, left) * share, 1),
                           "status": "failed" if any(r.failed for r in rows) else "ok"}
        run.write()
    run.meta["service_modules"] = [m for m in SERVICE_MODULES if m in sys.modules]
    if run.meta["service_modules"]:
        run.add(args.parts[-1], "imports", f"loaded {run.meta['service_modules']}",
                "fail: the check must import none of the service's modules")
    text = table(run.sorted_rows())
    print(f"\n## bench/gpu.py: {run.meta.get('gpu', run.meta['device'])}, torch {run.meta['torch']}, transformers "
          f"{run.meta['transformers']}, peft {run.meta['peft']}, {run.meta['date']}"
          f"{' (smoke: CPU, tiny shapes)' if args.smoke else ''}, {time.monotonic() - run.t0:.0f} s\n", flush=True)
    print(text, flush=True)
    run.write()
    failed = [r for r in run.rows if r.failed]
    if failed:
        print(f"\n{len(failed)} failed: " + "; ".join(f"{r.part} / {r.case}" for r in failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
