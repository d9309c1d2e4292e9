"""Benchmark of the SDPO loss (issue 9): ours vs a reference-style baseline, forward + backward.

Usage: python bench/loss.py [--quick] [--runs N] [--device cpu|cuda]

Cases: V = 151,936, top-k 100 + tail, IS clip 2, temperature 1, alpha 0.5 and 1.0, 1,024 and 4,096
response tokens (batch shape [1, T]); plus the fused from-hidden variant (H = 896, 1,024 tokens, alpha 1.0)
against materialising the logits with ``hidden @ W.T`` and calling ``sdpo_loss`` on them. ``--quick`` is a
small smoke run (V = 8,192, 64 tokens, alpha 1.0).

Measurements:
* time: median over ``--runs`` alternating (ours, baseline) forward+backward runs after one warm-up each;
  ratio = ours / baseline.
* peak extra memory: each measurement runs in a fresh subprocess; on CPU it is the RSS high-water mark
  (``resource.getrusage().ru_maxrss``) minus the RSS just before the forward pass (inputs are already
  allocated), on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation before. Includes the
  gradient of the student logits (both sides produce one).
* loss rel diff = |l_ours - l_base| / |l_base|; grad rel diff = max |g_ours - g_base| / max |g_base|.

Memory: the teacher logits are the student buffer shifted by one position (a view), so the 4,096-token
case holds one 2.5 GB input; the baseline's peak is about 3 more such tensors.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdpo.config import SelfDistillationConfig  # noqa: E402
from sdpo.losses import sdpo_loss, sdpo_loss_from_hidden, token_logprobs  # noqa: E402

# The fused case is dominated by the lm-head matmuls (alpha changes nothing there), so it runs one alpha.
FULL = dict(vocab=151_936, hidden=896, topk=100, tokens=(1024, 4096), alphas=(0.5, 1.0),
            fused_tokens=(1024,), fused_alphas=(1.0,))
QUICK = dict(vocab=8_192, hidden=64, topk=100, tokens=(64,), alphas=(1.0,), fused_tokens=(64,), fused_alphas=(1.0,))
IS_CLIP = 2.0


# --------------------------------------------------------------------------------------------------
# Reference-style baseline: full log-softmax of both sides, then top-k / gather, then the divergence
# --------------------------------------------------------------------------------------------------

def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def baseline_sdpo_loss(student_logits, teacher_logits, ids, mask, old_logprobs, alpha, topk, is_clip):
    """Token-mean SDPO loss the way the reference computes it (temperature 1: no division)."""
    student_logp = torch.log_softmax(_upcast(student_logits), dim=-1)
    teacher_logp = torch.log_softmax(_upcast(teacher_logits), dim=-1)
    logp_y = student_logp.gather(-1, ids[..., None]).squeeze(-1)
    topk_idx = torch.topk(student_logp, topk, dim=-1).indices
    s_k = student_logp.gather(-1, topk_idx)
    t_k = teacher_logp.gather(-1, topk_idx)

    def add_tail(lp):
        log_mass = torch.logsumexp(lp, dim=-1, keepdim=True).clamp(max=-1e-7)
        return torch.cat([lp, torch.log(-torch.expm1(log_mass))], dim=-1)

    s_d, t_d = add_tail(s_k), add_tail(t_k)
    if alpha == 0.0:
        per = torch.nn.functional.kl_div(s_d, t_d, reduction="none", log_target=True).sum(-1)
    elif alpha == 1.0:
        per = torch.nn.functional.kl_div(t_d, s_d, reduction="none", log_target=True).sum(-1)
    else:
        a = torch.tensor(alpha, dtype=s_d.dtype)
        mix = torch.logsumexp(torch.stack([s_d + torch.log(1 - a), t_d + torch.log(a)]), dim=0)
        kl_t = torch.nn.functional.kl_div(mix, t_d, reduction="none", log_target=True).sum(-1)
        kl_s = torch.nn.functional.kl_div(mix, s_d, reduction="none", log_target=True).sum(-1)
        per = torch.lerp(kl_s, kl_t, a)
    ratio = torch.exp(torch.clamp(logp_y.detach() - old_logprobs, -20, 20)).clamp(max=is_clip)
    per = per * ratio
    return (per * mask).sum() / mask.sum().clamp(min=1)


# --------------------------------------------------------------------------------------------------
# Inputs and one forward+backward per implementation
# --------------------------------------------------------------------------------------------------

@dataclass
class Inputs:
    tensors: dict
    alpha: float
    topk: int
    kind: str  # "logits" or "hidden"


def make_inputs(kind: str, tokens: int, vocab: int, hidden: int, alpha: float, topk: int,
                device: str, dtype: torch.dtype) -> Inputs:
    g = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, vocab, (1, tokens), generator=g, device=device)
    mask = torch.ones(1, tokens, device=device)
    if kind == "logits":
        buf = torch.empty(1, tokens + 1, vocab, device=device, dtype=dtype)
        torch.randn(buf.shape, generator=g, out=buf, device=device, dtype=dtype)
        buf.mul_(2.0)
        student = buf[:, :-1].detach().requires_grad_()
        teacher = buf[:, 1:]
        with torch.no_grad():
            old = token_logprobs(student, ids) + 0.3 * torch.randn(1, tokens, generator=g, device=device)
        t = dict(student=student, teacher=teacher, ids=ids, mask=mask, old=old)
    else:
        hs = torch.randn(1, tokens, hidden, generator=g, device=device, dtype=dtype).requires_grad_()
        ht = torch.randn(1, tokens, hidden, generator=g, device=device, dtype=dtype)
        w = (torch.randn(vocab, hidden, generator=g, device=device, dtype=dtype) * (2.0 / math.sqrt(hidden)))
        w.requires_grad_()
        with torch.no_grad():
            old = torch.zeros(1, tokens, device=device)
            for i in range(0, tokens, 256):
                old[:, i:i + 256] = token_logprobs(hs[:, i:i + 256] @ w.T, ids[:, i:i + 256])
            old += 0.3 * torch.randn(1, tokens, generator=g, device=device)
        t = dict(hs=hs, ht=ht, w=w, ids=ids, mask=mask, old=old)
    return Inputs(t, alpha, topk, kind)


def run_once(impl: str, inp: Inputs) -> tuple[float, list[torch.Tensor]]:
    """One forward+backward; returns (loss, gradients). Gradients are detached from the inputs."""
    t = inp.tensors
    cfg = SelfDistillationConfig(alpha=inp.alpha, distillation_topk=inp.topk, distillation_add_tail=True,
                                 is_clip=IS_CLIP, temperature=1.0, loss_agg_mode="token-mean")
    if inp.kind == "logits":
        t["student"].grad = None
        if impl == "ours":
            loss, _ = sdpo_loss(t["student"], t["teacher"], t["ids"], t["mask"], cfg, old_logprobs=t["old"])
        else:
            loss = baseline_sdpo_loss(t["student"], t["teacher"], t["ids"], t["mask"], t["old"], inp.alpha,
                                      inp.topk, IS_CLIP)
        loss.backward()
        grads = [t["student"].grad]
        t["student"].grad = None
    else:
        t["hs"].grad = None
        t["w"].grad = None
        if impl == "ours":
            loss, _ = sdpo_loss_from_hidden(t["hs"], t["ht"], t["w"], t["ids"], t["mask"], cfg,
                                            old_logprobs=t["old"])
        else:
            logits = t["hs"] @ t["w"].T
            with torch.no_grad():
                teacher = t["ht"] @ t["w"].T
            loss, _ = sdpo_loss(logits, teacher, t["ids"], t["mask"], cfg, old_logprobs=t["old"])
            del logits, teacher
        loss.backward()
        grads = [t["hs"].grad, t["w"].grad]
        t["hs"].grad = None
        t["w"].grad = None
    return float(loss.detach()), grads


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------------------------------
# Workers (run in subprocesses)
# --------------------------------------------------------------------------------------------------

def worker_mem(args) -> dict:
    inp = make_inputs(args.kind, args.tokens, args.vocab, args.hidden, args.alpha, args.topk, args.device,
                      _dtype(args.dtype))
    gc.collect()
    if args.device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_once(args.impl, inp)
        torch.cuda.synchronize()
        return {"peak_extra": torch.cuda.max_memory_allocated() - before}
    before = _rss_bytes()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    run_once(args.impl, inp)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if peak <= maxrss_before:
        # the high-water mark was set while building inputs: the run stayed below it
        return {"peak_extra": peak - before, "lower_bound": True}
    return {"peak_extra": peak - before}


def worker_time(args) -> dict:
    inp = make_inputs(args.kind, args.tokens, args.vocab, args.hidden, args.alpha, args.topk, args.device,
                      _dtype(args.dtype))
    times = {"ours": [], "baseline": []}
    for impl in ("ours", "baseline"):  # warm-up
        run_once(impl, inp)
    for _ in range(args.runs):
        for impl in ("ours", "baseline"):
            gc.collect()
            _sync(args.device)
            t0 = time.perf_counter()
            run_once(impl, inp)
            _sync(args.device)
            times[impl].append(time.perf_counter() - t0)
    # correctness: baseline first (keep its gradients), then ours
    loss_b, grads_b = run_once("baseline", inp)
    loss_o, grads_o = run_once("ours", inp)
    grad_rel = max(_max_abs(go, gb) / _max_abs(gb) for go, gb in zip(grads_o, grads_b, strict=True))
    return {
        "ours_s": statistics.median(times["ours"]),
        "baseline_s": statistics.median(times["baseline"]),
        "loss_rel": abs(loss_o - loss_b) / abs(loss_b),
        "grad_rel": grad_rel,
        "loss": loss_o,
    }


def _max_abs(a: torch.Tensor, b: torch.Tensor | None = None, rows: int = 256) -> float:
    """max |a - b| (or max |a|) computed in row blocks, without a full-size temporary."""
    a2 = a.reshape(-1, a.shape[-1])
    b2 = None if b is None else b.reshape(-1, b.shape[-1])
    out = 0.0
    for i in range(0, a2.shape[0], rows):
        blk = a2[i:i + rows].float()
        if b2 is not None:
            blk = blk - b2[i:i + rows].float()
        out = max(out, float(blk.abs().max()))
    return out


def _dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def spawn(worker: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--worker", worker] + [
        x for k, v in kw.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker failed ({' '.join(cmd)}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small smoke run (V=8192, 64 tokens)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per implementation (default 5, quick 2)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--no-fused", action="store_true", help="skip the from-hidden cases")
    # worker-only arguments
    p.add_argument("--worker", choices=["mem", "time"], help=argparse.SUPPRESS)
    for name, typ in (("impl", str), ("kind", str), ("tokens", int), ("vocab", int), ("hidden", int),
                      ("alpha", float), ("topk", int)):
        p.add_argument(f"--{name}", type=typ, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        res = worker_mem(args) if args.worker == "mem" else worker_time(args)
        print(json.dumps(res))
        return 0

    size = QUICK if args.quick else FULL
    runs = args.runs or (2 if args.quick else 5)
    cases = [("logits", n, a) for n in size["tokens"] for a in size["alphas"]]
    if not args.no_fused:
        cases += [("hidden", n, a) for n in size["fused_tokens"] for a in size["fused_alphas"]]
    threads = torch.get_num_threads()
    print(f"# SDPO loss benchmark: V={size['vocab']}, k={size['topk']}+tail, IS clip {IS_CLIP}, {args.dtype}, "
          f"device={args.device}, torch {torch.__version__}, {threads} threads, runs={runs}", flush=True)
    header = ("| case | tokens | alpha | ours ms | base ms | time ratio | ours peak MiB | base peak MiB "
              "| mem ratio | loss rel diff | grad rel diff |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    rows = []
    for kind, tokens, alpha in cases:
        common = dict(kind=kind, tokens=tokens, vocab=size["vocab"], hidden=size["hidden"], alpha=alpha,
                      topk=size["topk"], device=args.device, dtype=args.dtype)
        mem = {impl: spawn("mem", impl=impl, **common)["peak_extra"] for impl in ("ours", "baseline")}
        tm = spawn("time", runs=runs, **common)
        label = "sdpo_loss vs reference-style" if kind == "logits" else "from_hidden vs logits+sdpo_loss"
        row = dict(case=label, tokens=tokens, alpha=alpha, ours_ms=tm["ours_s"] * 1e3,
                   base_ms=tm["baseline_s"] * 1e3, time_ratio=tm["ours_s"] / tm["baseline_s"],
                   ours_mib=mem["ours"] / 2**20, base_mib=mem["baseline"] / 2**20,
                   mem_ratio=mem["ours"] / max(mem["baseline"], 1), loss_rel=tm["loss_rel"],
                   grad_rel=tm["grad_rel"])
        rows.append(row)
        print(f"| {label} | {tokens} | {alpha} | {row['ours_ms']:.0f} | {row['base_ms']:.0f} | "
              f"{row['time_ratio']:.2f} | {row['ours_mib']:.0f} | {row['base_mib']:.0f} | {row['mem_ratio']:.2f} | "
              f"{row['loss_rel']:.1e} | {row['grad_rel']:.1e} |", flush=True)
    ok = all(math.isfinite(r["time_ratio"]) and math.isfinite(r["mem_ratio"]) for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
