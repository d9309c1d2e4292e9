"""Benchmark of the SDPO loss: ours vs a reference-style baseline, forward + backward.

Usage: python bench/loss.py [--quick] [--runs N] [--fused-runs N] [--device cpu|cuda] [--no-fused]

Cases: V = 151,936, top-k 100 + tail, IS clip 2, temperature 1, alpha 0.5 and 1.0, 1,024 and 4,096
response tokens (batch shape [1, T]), for ``sdpo_loss`` on logits and for the fused ``sdpo_loss_from_hidden``
(H = 896). The fused variant is compared with two baselines that materialise the logits ``hidden @ W.T``
(student, and teacher under no_grad): ``sdpo_loss`` on them, and the reference-style loss on them.
``--quick`` is a small smoke run (V = 8,192, 64 tokens, alpha 1.0).

Measurements:
* time: median over ``--runs`` (fused cases: ``--fused-runs``) alternating forward+backward runs of every
  implementation after one warm-up each; ratio = ours / baseline.
* peak extra memory: each measurement runs in a fresh subprocess. On CPU: a small warm-up run, then the
  RSS high-water mark is reset to the current RSS (``/proc/self/clear_refs``; where that is not allowed, the
  process's ``ru_maxrss`` without warm-up) and the peak is the high-water mark after the run minus the RSS
  just before it (inputs already allocated); glibc's mmap threshold is fixed at 1 MiB in these subprocesses so
  that RSS follows the live tensors. On CUDA ``torch.cuda.max_memory_allocated`` minus the allocation before.
  Includes the gradients each side returns (the [T, V] logit gradient; for the fused case the [T, H] and
  [V, H] gradients).
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

FULL = dict(vocab=151_936, hidden=896, topk=100, tokens=(1024, 4096), alphas=(0.5, 1.0),
            fused_tokens=(1024, 4096), fused_alphas=(0.5, 1.0))
QUICK = dict(vocab=8_192, hidden=64, topk=100, tokens=(64,), alphas=(1.0,), fused_tokens=(64,), fused_alphas=(1.0,))
#: The baselines of each case kind: for logits the reference-style loss; for hidden states materialised logits
#: with our ``sdpo_loss`` ("baseline") and with the reference-style loss ("reference").
BASELINES = {"logits": ("baseline",), "hidden": ("baseline", "reference")}
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
            if impl == "baseline":
                loss, _ = sdpo_loss(logits, teacher, t["ids"], t["mask"], cfg, old_logprobs=t["old"])
            else:
                loss = baseline_sdpo_loss(logits, teacher, t["ids"], t["mask"], t["old"], inp.alpha, inp.topk,
                                          IS_CLIP)
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


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (VmHWM) to its current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


# --------------------------------------------------------------------------------------------------
# Workers (run in subprocesses)
# --------------------------------------------------------------------------------------------------

def worker_mem(args) -> dict:
    dtype = _dtype(args.dtype)
    if args.device == "cuda":
        inp = make_inputs(args.kind, args.tokens, args.vocab, args.hidden, args.alpha, args.topk, args.device, dtype)
        gc.collect()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_once(args.impl, inp)
        torch.cuda.synchronize()
        return {"peak_extra": torch.cuda.max_memory_allocated() - before}
    resettable = _reset_peak_rss()
    if resettable:  # warm-up on a small case (lazy initialisation must not count), then a fresh peak
        run_once(args.impl, make_inputs(args.kind, 16, args.vocab, args.hidden, args.alpha, args.topk,
                                        args.device, dtype))
    inp = make_inputs(args.kind, args.tokens, args.vocab, args.hidden, args.alpha, args.topk, args.device, dtype)
    gc.collect()
    if resettable:
        _reset_peak_rss()
    before = _rss_bytes()
    # without the reset, the process's peak so far (building the inputs) may hide a lower peak of the run:
    # then the figure is only an upper bound, and the output says so
    peak_so_far = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _, grads = run_once(args.impl, inp)   # the returned gradients stay alive: they are part of the peak
    if resettable:
        return {"peak_extra": _peak_rss_bytes() - before, "method": "clear_refs"}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_extra": peak - before, "method": "ru_maxrss", "upper_bound": peak <= peak_so_far}


def worker_time(args) -> dict:
    inp = make_inputs(args.kind, args.tokens, args.vocab, args.hidden, args.alpha, args.topk, args.device,
                      _dtype(args.dtype))
    impls = ("ours",) + BASELINES[args.kind]
    times = {impl: [] for impl in impls}
    for impl in impls:  # warm-up
        run_once(impl, inp)
    for _ in range(args.runs):
        for impl in impls:
            gc.collect()
            _sync(args.device)
            t0 = time.perf_counter()
            run_once(impl, inp)
            _sync(args.device)
            times[impl].append(time.perf_counter() - t0)
    out = {f"{impl}_s": statistics.median(times[impl]) for impl in impls}
    # correctness: ours first (keep its gradients), then each baseline
    loss_o, grads_o = run_once("ours", inp)
    out["loss"] = loss_o
    for impl in impls[1:]:
        loss_b, grads_b = run_once(impl, inp)
        out[f"{impl}_loss_rel"] = abs(loss_o - loss_b) / abs(loss_b)
        out[f"{impl}_grad_rel"] = max(_max_abs(go, gb) / _max_abs(gb) for go, gb in zip(grads_o, grads_b,
                                                                                       strict=True))
        del grads_b
    return out


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
    env = dict(os.environ)
    if worker == "mem":  # RSS follows the live tensors (no adaptive heap reuse of freed large blocks)
        env["MALLOC_MMAP_THRESHOLD_"] = str(2**20)
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
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
    p.add_argument("--fused-runs", type=int, default=None,
                   help="timed runs per implementation of the fused cases (default: --runs; the 4,096-token "
                        "fused case takes ~1 min per run on 2 CPU cores)")
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
    fused_runs = args.fused_runs or runs
    cases = [("logits", n, a) for n in size["tokens"] for a in size["alphas"]]
    if not args.no_fused:
        cases += [("hidden", n, a) for n in size["fused_tokens"] for a in size["fused_alphas"]]
    threads = torch.get_num_threads()
    print(f"# SDPO loss benchmark: V={size['vocab']}, k={size['topk']}+tail, IS clip {IS_CLIP}, {args.dtype}, "
          f"device={args.device}, torch {torch.__version__}, {threads} threads, runs={runs}"
          + ("" if args.no_fused else f", fused runs={fused_runs}, H={size['hidden']}"), flush=True)
    header = ("| case | tokens | alpha | ours ms | base ms | time ratio | ours peak MiB | base peak MiB "
              "| mem ratio | loss rel diff | grad rel diff |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    rows = []
    labels = {("logits", "baseline"): "sdpo_loss vs reference-style",
              ("hidden", "baseline"): "from_hidden vs logits+sdpo_loss",
              ("hidden", "reference"): "from_hidden vs logits+reference-style"}
    for kind, tokens, alpha in cases:
        common = dict(kind=kind, tokens=tokens, vocab=size["vocab"], hidden=size["hidden"], alpha=alpha,
                      topk=size["topk"], device=args.device, dtype=args.dtype)
        mem = {}
        for impl in ("ours",) + BASELINES[kind]:
            res = spawn("mem", impl=impl, **common)
            mem[impl] = res["peak_extra"]
            if res.get("upper_bound"):
                print(f"# note: {kind} {tokens} {impl}: peak not resettable here, the figure is an upper bound",
                      flush=True)
        tm = spawn("time", runs=fused_runs if kind == "hidden" else runs, **common)
        for base in BASELINES[kind]:
            label = labels[(kind, base)]
            row = dict(case=label, tokens=tokens, alpha=alpha, ours_ms=tm["ours_s"] * 1e3,
                       base_ms=tm[f"{base}_s"] * 1e3, time_ratio=tm["ours_s"] / tm[f"{base}_s"],
                       ours_mib=mem["ours"] / 2**20, base_mib=mem[base] / 2**20,
                       mem_ratio=mem["ours"] / max(mem[base], 1), loss_rel=tm[f"{base}_loss_rel"],
                       grad_rel=tm[f"{base}_grad_rel"])
            rows.append(row)
            print(f"| {label} | {tokens} | {alpha} | {row['ours_ms']:.0f} | {row['base_ms']:.0f} | "
                  f"{row['time_ratio']:.2f} | {row['ours_mib']:.0f} | {row['base_mib']:.0f} | "
                  f"{row['mem_ratio']:.2f} | {row['loss_rel']:.1e} | {row['grad_rel']:.1e} |", flush=True)
    ok = all(math.isfinite(r["time_ratio"]) and math.isfinite(r["mem_ratio"]) for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
