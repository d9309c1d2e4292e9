"""Sampling with a colocated vLLM engine (the optional ``gpu`` extra: ``vllm==0.32.0``).

The engine shares the trainer's GPU and follows the policy after every optimizer step:

* ``adapter="lora"``: the trainer holds a PEFT LoRA model over a frozen base. vLLM serves the base checkpoint
  with LoRA enabled; ``update_weights`` saves the adapter to a fresh directory and the next generation uses a
  ``LoRARequest`` with a fresh id. The previous adapter is removed from the engine (and its directory deleted)
  before that generation.
* ``adapter="full"``: every weight trains. ``update_weights`` pushes the trainer's parameters into the
  running engine in place with vLLM's weight-transfer API over CUDA IPC (no restart, no copy through disk).

With ``enable_sleep`` the engine releases its GPU memory between generations (``LLM.sleep``): level 1
(weights offloaded to CPU, KV cache dropped) in LoRA mode, where the base weights must survive; level 2
(weights and KV cache dropped, vllm/device_allocator/sleep_mode_backend.py ``CuMemBackend.suspend``) in full
mode, which keeps no copy of the weights anywhere. Waking from level 2 re-allocates the weights without
their values, so every wake in full mode is followed by a push of the trainer's weights unless
``update_weights`` already pushed since that sleep (the sampler keeps a reference to the trainer's model for
this; a generation without an update in between -- test-time baselines, multi-turn rounds, a step without a
learning signal -- then samples from the right weights). Level 2 plus a re-push was chosen over level 1
when no update is pending: it holds no CPU copy of the weights and the push is a GPU-to-GPU copy over CUDA
IPC, cheap next to sampling. Before every wake the trainer's CUDA caching
allocator returns its free blocks to the driver (``torch.cuda.empty_cache``): vLLM's sleep-mode allocator
maps memory outside PyTorch's cache, so memory the trainer freed but still caches would not be available.

``close()`` (also ``with VLLMSampler(...) as s:``, and at garbage collection) shuts the engine down and
deletes the sampler's temp directory; the owner must call it when done.

Seeds: vLLM seeds the j-th completion of a request with ``seed + j`` (vllm/v1/engine/parallel_sampling.py),
so each prompt gets its own ``SamplingParams`` with ``seed + i * n``: rollout j of prompt i is drawn with
seed ``seed + i * n + j``, distinct within a call, so identical questions in one batch get different rollouts.

Prompts are tokenized with *our* tokenizer (``sdpo.models.chat_ids``) and passed to vLLM as token ids, and
responses are decoded with it, so token ids and text match the HF sampler exactly; vLLM's tokenizer is never
loaded (``skip_tokenizer_init``). Per-token log-probs are those of the sampled token after temperature /
top-k / top-p (``logprobs_mode="processed_logprobs"``, as the reference's rollout config), which is what
``Rollout.logprobs`` promises and what rollout correction compares with the trainer (with ``top_p < 1`` or
``top_k`` that comparison is biased, see ``sdpo.rollout.correction``; the sampler warns once).

Scope: single-GPU jobs (the engine shares the trainer's GPU; multi-process ddp/fsdp jobs use the HF
sampler). Full-weight pushes send the trainer's ``named_parameters()`` to vLLM's ``load_weights``, which
expects checkpoint names: right for dense architectures (Qwen2/Qwen3, Llama, ...), where transformers'
in-memory names are the checkpoint's; MoE models whose experts transformers fuses in memory are not covered.
LoRA adapters are served by vLLM's LoRA kernels, which support the attention and MLP projections (the
default ``sdpo.adapters`` targets), not ``modules_to_save``.

Stopping: with ``should_stop`` the sampler runs the engine loop that ``LLM.generate`` runs
(``LLMEngine.add_request`` per request, then ``step()`` until nothing is unfinished), asking ``should_stop()``
between steps; when it says stop, the unfinished requests are aborted (``LLMEngine.abort_request``) and
``generate`` raises ``sdpo.callbacks.StopRequested``. Without it, ``LLM.generate`` runs as is.

Every vLLM API used here was read from the v0.32.0 wheel's source; the file is cited next to each use.
``vllm`` is imported only inside functions, so this module imports without it.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdpo.callbacks import StopRequested
from sdpo.config import ADAPTERS, ConfigError, _choice, build_dataclass
from sdpo.models import chat_ids
from sdpo.rollout.base import Rollout, SamplingParams
from sdpo.rollout.correction import truncated_sampling_warning

# vllm/config/lora.py (v0.32.0): ``MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]``.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
INSTALL_HINT = (
    "install the gpu extra: pip install -e '.[gpu]' (vllm==0.32.0, which needs an NVIDIA GPU with CUDA; "
    "the HF sampler works everywhere: sampler: hf)"
)
REINSTALL_HINT = ("reinstall the gpu extra against torch 2.13.0 (pip install -e '.[gpu]' with "
                  "torch==2.13.0 from PyPI, see docs/gpus.md), or use sampler: hf")
BROKEN_INSTALL = "vllm is installed but importing it failed"


def vllm_import_error() -> str | None:
    """None when ``vllm`` and its ``LLM`` entry point import here, else why not (in words, with the fix).

    An import, not ``importlib.util.find_spec``: a broken install (wrong CUDA / torch build, a missing shared
    library) is found by ``find_spec`` but fails here, and must not be chosen by ``sampler: auto``."""
    try:
        import vllm

        vllm.LLM  # noqa: B018 -- vllm/__init__.py resolves LLM lazily; this imports the engine's modules
    except Exception as err:  # noqa: BLE001 -- any failure of this third-party import means "cannot run here"
        if isinstance(err, ModuleNotFoundError) and err.name == "vllm":
            return f"vllm is not installed; {INSTALL_HINT}"
        return f"{BROKEN_INSTALL} ({type(err).__name__}: {err}); {REINSTALL_HINT}"
    return None


def vllm_unavailable_reason(device: torch.device | str | None = None) -> str | None:
    """None when a colocated vLLM engine can be started here, else why not (in words, with the fix).

    device: where the trainer's model lives; when given, anything but a CUDA device is a reason (the engine
    samples for a model on the GPU it shares). The cheap checks come first, so a CPU machine never imports
    vllm; the import is tried last (``vllm_import_error``)."""
    if device is not None and torch.device(device).type != "cuda":
        return (f"the trainer's model is on {torch.device(device)}, not on a CUDA device; the colocated vLLM "
                "sampler serves a model on the GPU (device: cuda or auto on a GPU machine), use sampler: hf here")
    if not torch.cuda.is_available():
        return ("no CUDA GPU is visible (torch.cuda.is_available() is False); vLLM sampling needs an NVIDIA GPU "
                "with CUDA and the gpu extra (pip install -e '.[gpu]'); use sampler: hf on this machine")
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        return "this is a multi-process (ddp/fsdp) job; the colocated vLLM sampler serves single-GPU jobs " \
               "(distributed: none), use sampler: hf here"
    return vllm_import_error()


@dataclass(frozen=True)
class VLLMOptions:
    """Settings of the colocated vLLM engine (``sampler: vllm``).

    adapter: "lora" (the trainer's model is a PEFT LoRA model; adapters are hot-swapped) or "full" (all
        weights train; they are pushed into the engine in place).
    gpu_memory_utilization: fraction of the GPU vLLM may take for weights + KV cache, in (0, 1]. The trainer
        needs the rest.
    max_model_len: longest prompt + response the engine accepts; None = the model's own limit. Callers that know
        both lengths pass max_prompt_len + max_new_tokens: vLLM then only needs KV-cache room for that length
        (not the model's full context) to start, and ``generate`` refuses a longer request instead of letting
        vLLM end it early without saying so.
    enable_sleep: release the engine's GPU memory between generations (vLLM sleep mode).
    lora_rank: largest LoRA rank the engine must serve; None = the trainer's adapter rank. Rounded up to a
        rank vLLM supports (1, 8, 16, ..., 512).
    enforce_eager: skip CUDA-graph capture (faster start, slower decoding; used by the tests).
    seed: the engine's seed (per-request seeds come from ``SamplingParams.seed``).
    model_path: local checkpoint vLLM loads (the base model in LoRA mode); None = the directory the trainer's
        model was loaded from (``config._name_or_path``).
    dtype: weight dtype of the engine ("bfloat16", "float16", "float32"); None = the trainer model's dtype.
    work_dir: where adapters (and, if needed, an exported checkpoint) are written; None = a temp dir.
    """

    adapter: str = "lora"
    gpu_memory_utilization: float = 0.5
    max_model_len: int | None = None
    enable_sleep: bool = True
    lora_rank: int | None = None
    enforce_eager: bool = False
    seed: int = 0
    model_path: str | None = None
    dtype: str | None = None
    work_dir: str | None = None

    def __post_init__(self) -> None:
        _choice("adapter", self.adapter, ADAPTERS)
        gmu = self.gpu_memory_utilization
        if isinstance(gmu, bool) or not isinstance(gmu, (int, float)) or not 0.0 < gmu <= 1.0:
            raise ConfigError("gpu_memory_utilization", f"got {gmu!r}; expected a number in (0, 1], e.g. 0.5 "
                              "(the trainer needs the rest of the GPU)")
        for name in ("max_model_len", "lora_rank"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(name, f"got {value!r}; expected a positive integer or null")
        if self.lora_rank is not None and self.lora_rank > VLLM_LORA_RANKS[-1]:
            raise ConfigError("lora_rank", f"got {self.lora_rank}; vLLM serves LoRA ranks up to "
                              f"{VLLM_LORA_RANKS[-1]}")
        for name in ("enable_sleep", "enforce_eager"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"got {getattr(self, name)!r}; expected true or false")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError("seed", f"got {self.seed!r}; expected an integer")
        if self.dtype is not None and self.dtype not in ("bfloat16", "float16", "float32"):
            raise ConfigError("dtype", f"got {self.dtype!r}; allowed values are 'bfloat16', 'float16', "
                              "'float32' or null (the trainer model's dtype)")


def vllm_lora_rank(rank: int) -> int:
    """The smallest LoRA rank vLLM 0.32 accepts as ``max_lora_rank`` that is >= ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ConfigError("lora_rank", f"got {rank}; vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}")


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _policy_adapter(model) -> str:
    """Name of the trained LoRA adapter: "default" (sdpo.adapters), else the active one."""
    if "default" in model.peft_config:
        return "default"
    active = model.active_adapter
    return active if isinstance(active, str) else active[0]


def _cuda_device_of(model) -> torch.device:
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ConfigError("adapter", f"'full' pushes weights to vLLM over CUDA IPC, but the model is on {device}; "
                          "move it to the GPU first")
    return device


def _local_checkpoint(name: Any) -> Path | None:
    if isinstance(name, (str, Path)) and str(name) and (Path(name) / "config.json").exists():
        return Path(name)
    return None


class _LLMSyncClient:
    """The four-call control plane a vLLM trainer-side weight-transfer engine drives, over an in-process
    ``LLM``. ``VLLMWeightSyncClient`` (vllm/distributed/weight_transfer/base.py) passes bare ``init_info`` /
    ``update_info`` payloads while ``LLM``'s methods (vllm/entrypoints/rl/offline.py, ``RLOfflineMixin``)
    take request objects, hence this adapter (vLLM 0.32 ships only HTTP and Ray clients)."""

    def __init__(self, llm) -> None:
        self._llm = llm

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        self._llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info=init_info))

    def start_weight_update(self) -> None:
        self._llm.start_weight_update()

    def update_weights(self, update_info) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        self._llm.update_weights(WeightTransferUpdateRequest(update_info=update_info))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._llm.finish_weight_update(weight_version)


class VLLMSampler:
    """A ``Sampler`` backed by a colocated ``vllm.LLM``; see the module docstring.

    ``model`` is the trainer's model (a PEFT model in LoRA mode, a plain HF causal LM in full mode, on the
    GPU); ``tokenizer`` is the trainer's tokenizer; ``max_prompt_len`` rejects longer prompts (in tokens) as
    the HF sampler does. Engine options (keyword arguments): ``VLLMOptions``, e.g.
    ``VLLMSampler(model, tok, adapter="full", gpu_memory_utilization=0.4, max_model_len=4096)``.

    Call ``close()`` when done (or use it as a context manager): it stops the engine and deletes the temp dir.
    ``should_stop``: asked between engine steps; when it says stop, the call's requests are aborted and
    ``generate`` raises ``StopRequested`` (module docstring).
    """

    def __init__(self, model, tokenizer, *, max_prompt_len: int | None = None,
                 should_stop: Callable[[], bool] | None = None, **options: Any) -> None:
        # Everything close() looks at exists before anything that can fail (close runs on a failed __init__
        # and from __del__).
        self._closed = False
        self.should_stop = should_stop
        self.llm: Any = None  # vLLM's LLM (None before it is built and after close)
        self._transfer: Any = None  # trainer-side weight-transfer engine (full mode), created on first push
        self.work_dir: Path | None = None
        self._own_work_dir = False
        self._model = None  # full mode: the trainer's model, re-pushed after a level-2 sleep (a reference)

        self.options: VLLMOptions = build_dataclass(VLLMOptions, options)
        if max_prompt_len is not None and (isinstance(max_prompt_len, bool) or not isinstance(max_prompt_len, int)
                                           or max_prompt_len < 1):
            raise ConfigError("max_prompt_len", f"got {max_prompt_len!r}; expected a positive integer or null")
        self.max_prompt_len = max_prompt_len
        opts = self.options
        if opts.max_model_len is not None and max_prompt_len is not None and max_prompt_len >= opts.max_model_len:
            raise ConfigError("max_model_len", f"got {opts.max_model_len}; it must exceed max_prompt_len="
                              f"{max_prompt_len} (it holds the prompt and the response): pass max_prompt_len + "
                              "max_new_tokens")
        reason = vllm_unavailable_reason()
        if reason is not None:
            raise ConfigError("sampler", f"got 'vllm' but {reason}")
        if opts.adapter == "lora" and not _is_peft(model):
            raise ConfigError("adapter", "got 'lora' but the model is not a PEFT LoRA model; wrap it with "
                              "peft.get_peft_model or use adapter='full'")
        if opts.adapter == "full" and _is_peft(model):
            raise ConfigError("adapter", "got 'full' but the model is a PEFT model; use adapter='lora' (or "
                              "merge the adapter first)")
        if opts.adapter == "full":
            _cuda_device_of(model)  # fail before an engine is started
        self.tokenizer = tokenizer
        self.stop_token_ids = self._stop_ids(model, tokenizer)
        self.version = 0  # incremented by every update_weights; it is also the LoRA id in use
        self._lora_request = None
        self._stale_loras: list[tuple[int, Path]] = []
        self._sleeping_tags: set[str] = set()
        self._sleep_level = 1 if opts.adapter == "lora" else 2
        self._weights_discarded = False  # a level-2 sleep dropped the weights and nothing was pushed since
        self._warned_truncation = False

        self._own_work_dir = opts.work_dir is None
        self.work_dir = Path(opts.work_dir or tempfile.mkdtemp(prefix="sdpo-vllm-"))
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            base = model.get_base_model() if opts.adapter == "lora" else model
            self.model_path = self._checkpoint_dir(model, base, tokenizer)
            dtype = opts.dtype or str(next(base.parameters()).dtype).removeprefix("torch.")
            self.llm = self._build_engine(model, dtype)
            # The engine must sample from the trainer's *current* policy from the first call: publish the
            # adapter (LoRA) or push the weights (full; they may differ from the checkpoint after a resume).
            self.update_weights(model)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> VLLMSampler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A safety net only (the owner calls close()); at interpreter exit vLLM's own finalizers may have run
        # and modules may be half torn down, so nothing raised here may escape.
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # -- construction -------------------------------------------------------------------------------

    @staticmethod
    def _stop_ids(model, tokenizer) -> list[int]:
        ids: list[int] = []
        candidates = [tokenizer.eos_token_id]
        gen = getattr(model, "generation_config", None)
        if gen is not None and gen.eos_token_id is not None:
            eos = gen.eos_token_id
            candidates += list(eos) if isinstance(eos, (list, tuple)) else [eos]
        for i in candidates:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
        if not ids:
            raise ConfigError("tokenizer", "has no eos_token_id; the sampler cannot tell where a response ends")
        return ids

    def _checkpoint_dir(self, model, base, tokenizer) -> Path:
        opts = self.options
        if opts.model_path is not None:
            path = _local_checkpoint(opts.model_path)
            if path is None:
                raise ConfigError("model_path", f"got {opts.model_path!r}; no Hugging Face checkpoint there "
                                  "(config.json missing)")
            return path
        path = _local_checkpoint(getattr(base.config, "_name_or_path", None))
        if path is not None:
            return path
        if opts.adapter == "lora":
            raise ConfigError("model_path", "the base model was not loaded from a local directory; pass "
                              "model_path= the base checkpoint vLLM should serve")
        # Full mode: export the current weights once; later updates go through the weight-transfer API.
        assert self.work_dir is not None  # set in __init__ before the engine is built
        out = self.work_dir / "checkpoint"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return out

    def _build_engine(self, model, dtype: str):
        # vllm/entrypoints/llm.py (v0.32.0): ``LLM(model, *, tokenizer, skip_tokenizer_init, dtype, seed,
        # gpu_memory_utilization, enforce_eager, **kwargs -> EngineArgs)``; the EngineArgs fields used below
        # (max_model_len, enable_sleep_mode, logprobs_mode, enable_lora, max_lora_rank, max_loras,
        # weight_transfer_config) are declared in vllm/engine/arg_utils.py.
        from vllm import LLM

        opts = self.options
        kwargs: dict[str, Any] = dict(
            skip_tokenizer_init=True,
            dtype=dtype,
            seed=opts.seed,
            gpu_memory_utilization=float(opts.gpu_memory_utilization),
            enforce_eager=opts.enforce_eager,
            enable_sleep_mode=opts.enable_sleep,
            # vllm/config/model.py: processed_* = after temperature and top-k/top-p, i.e. the distribution
            # the token was drawn from.
            logprobs_mode="processed_logprobs",
        )
        if opts.max_model_len is not None:
            kwargs["max_model_len"] = opts.max_model_len
        if opts.adapter == "lora":
            rank = opts.lora_rank or int(model.peft_config[_policy_adapter(model)].r)
            kwargs.update(enable_lora=True, max_lora_rank=vllm_lora_rank(rank), max_loras=1)
        else:
            # vllm/config/weight_transfer.py + vllm/distributed/weight_transfer/ipc_engine.py: CUDA IPC is
            # the backend for a trainer and an engine on the same GPU.
            from vllm.config import WeightTransferConfig

            kwargs["weight_transfer_config"] = WeightTransferConfig(backend="ipc")
            # The IPC handles (tuples holding torch types) travel to the engine-core process as arguments of
            # a utility call; vllm/v1/serial_utils.py (MsgpackEncoder.enc_hook) only pickles non-msgpack
            # objects when this is set. The socket is local to this machine and the peer is our own child
            # process. Set before the engine process starts so both ends see it.
            os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        return LLM(str(self.model_path), **kwargs)

    # -- the Sampler protocol -----------------------------------------------------------------------

    def generate(self, prompts: list[list[dict[str, str]]], n: int, params: SamplingParams) -> list[Rollout]:
        """``n`` rollouts per prompt, grouped: result[i * n + j] is the j-th rollout of prompts[i], drawn with
        seed ``params.seed + i * n + j`` (when ``params.seed`` is set)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: got {n!r}; expected a positive integer")
        self._check_open()
        if not prompts:
            return []
        from vllm import SamplingParams as VSamplingParams
        from vllm import TokensPrompt

        prompt_ids = [self._prompt_ids(messages) for messages in prompts]  # raises before the engine wakes
        for ids in prompt_ids:
            self._check_length(len(ids), int(params.max_new_tokens))
        self._warn_truncation(params)
        self._wake()
        self._evict_stale_loras()
        # vllm/sampling_params.py (v0.32.0) refuses n > 1 with greedy decoding (temperature < 1e-5), so a
        # greedy group is sent as n requests of one completion each.
        greedy = params.temperature < 1e-5
        copies, per_request = (n, 1) if greedy else (1, n)
        requests, sampling = [], []
        for i, ids in enumerate(prompt_ids):
            for c in range(copies):
                # One SamplingParams per request: vLLM gives completion j of a request seed + j
                # (vllm/v1/engine/parallel_sampling.py), so request (i, c) starts at seed + i * n + c and every
                # rollout of the call has its own seed. ``logprobs=0`` returns the sampled token's log-prob
                # only; ``top_k=0`` disables top-k; ``detokenize=False`` because we decode with our tokenizer.
                sampling.append(VSamplingParams(
                    n=per_request,
                    temperature=float(params.temperature),
                    top_p=float(params.top_p),
                    top_k=int(params.top_k) if params.top_k else 0,
                    seed=None if params.seed is None else int(params.seed) + i * n + c,
                    max_tokens=int(params.max_new_tokens),
                    logprobs=0,
                    stop_token_ids=list(self.stop_token_ids),
                    detokenize=False,
                ))
                requests.append(TokensPrompt(prompt_token_ids=ids))
        # vllm/inputs/llm.py: ``TokensPrompt(prompt_token_ids=...)``; vllm/entrypoints/llm.py: ``generate(prompts,
        # sampling_params (one, or a list paired one by one with the prompts), *, use_tqdm, lora_request)``
        # returns outputs in prompt order.
        if self.should_stop is None:
            outputs = self.llm.generate(requests, sampling, use_tqdm=False, lora_request=self._lora_request)
        else:
            outputs = self._run_stoppable(requests, sampling)
        if len(outputs) != len(requests):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
        rollouts: list[Rollout] = []
        for k, out in enumerate(outputs):
            i = k // copies
            completions = sorted(out.outputs, key=lambda c: c.index)
            if len(completions) != per_request:
                raise RuntimeError(f"vLLM returned {len(completions)} completions for prompt {i}, "
                                   f"expected {per_request}")
            rollouts.extend(self._to_rollout(prompt_ids[i], c, i) for c in completions)
        if self.options.enable_sleep:
            self._sleep()
        return rollouts

    def update_weights(self, model) -> None:
        """Make the next generation sample from ``model``'s current weights (after an optimizer step)."""
        self._check_open()
        self.version += 1
        if self.options.adapter == "lora":
            self._publish_lora(model)
        else:
            self._model = model
            self._push_full_weights(model)

    def close(self) -> None:
        """Shut the engine down, free its GPU memory and delete this sampler's temp directory. Idempotent; the
        sampler cannot be used afterwards."""
        if getattr(self, "_closed", True):  # closed already, or __init__ failed before anything was held
            return
        self._closed = True
        transfer, self._transfer = self._transfer, None
        llm, self.llm = self.llm, None
        self._model = self._lora_request = None
        try:
            if transfer is not None:
                transfer.shutdown()  # vllm/distributed/weight_transfer/base.py: trainer-side teardown
        finally:
            try:
                if llm is not None:
                    # vLLM 0.32 has no ``LLM.shutdown``; vllm/v1/engine/llm_engine.py: ``LLMEngine.engine_core``
                    # is an EngineCoreClient whose ``shutdown()`` stops the engine-core process
                    # (vllm/v1/engine/core_client.py), which releases the GPU memory it held.
                    llm.llm_engine.engine_core.shutdown()
            finally:
                del llm
                gc.collect()  # in-process engines (VLLM_ENABLE_V1_MULTIPROCESSING=0) free their tensors here
                if torch.cuda.is_available() and torch.cuda.is_initialized():
                    torch.cuda.empty_cache()
                if self._own_work_dir and self.work_dir is not None:
                    shutil.rmtree(self.work_dir, ignore_errors=True)

    # -- helpers ------------------------------------------------------------------------------------

    def _run_stoppable(self, requests: list, sampling: list) -> list:
        """``LLM.generate``'s engine loop with a stop check between steps; outputs in request order.

        vllm/entrypoints/llm.py (v0.32.0): ``generate`` sets ``output_kind = RequestOutputKind.FINAL_ONLY`` on
        every ``SamplingParams``, adds each request with ``llm_engine.add_request(request_id, prompt, params,
        lora_request=...)`` and runs ``_run_engine``: ``while llm_engine.has_unfinished_requests(): step()``,
        keeping the outputs with ``finished``. vllm/v1/engine/llm_engine.py: ``abort_request(request_ids)``
        drops unfinished requests (parallel-sampling children with their parent)."""
        from vllm.sampling_params import RequestOutputKind

        engine, should_stop = self.llm.llm_engine, self.should_stop
        assert should_stop is not None  # generate runs this loop only with a should_stop
        tag = uuid.uuid4().hex[:12]
        ids = [f"sdpo-{tag}-{k}" for k in range(len(requests))]
        for rid, prompt, sp in zip(ids, requests, sampling, strict=True):
            sp.output_kind = RequestOutputKind.FINAL_ONLY
            engine.add_request(rid, prompt, sp, lora_request=self._lora_request)
        done: dict[str, Any] = {}
        try:
            while engine.has_unfinished_requests():
                if should_stop():
                    raise StopRequested
                for out in engine.step():
                    if getattr(out, "finished", False):
                        done[out.request_id] = out
        except BaseException:
            unfinished = [rid for rid in ids if rid not in done]
            if unfinished:
                engine.abort_request(unfinished)
            raise
        return [done[rid] for rid in ids if rid in done]

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this VLLMSampler is closed (its engine was shut down); build a new sampler")

    def _warn_truncation(self, params: SamplingParams) -> None:
        # Rollout correction is biased with truncated sampling (sdpo/rollout/correction.py); say so once.
        message = None if self._warned_truncation else truncated_sampling_warning(params.top_p, params.top_k)
        if message is not None:
            self._warned_truncation = True
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        ids = chat_ids(self.tokenizer, messages)
        if self.max_prompt_len is not None and len(ids) > self.max_prompt_len:
            raise ValueError(
                f"max_prompt_len: prompt has {len(ids)} tokens, more than max_prompt_len={self.max_prompt_len}; "
                "raise max_prompt_len or shorten the question"
            )
        return ids

    def _check_length(self, prompt_len: int, max_new_tokens: int) -> None:
        # vLLM stops a sequence silently at max_model_len (vllm/v1/core/sched/utils.py ``check_stop``), which
        # would cut responses short of max_new_tokens without saying so.
        limit = self.options.max_model_len
        if limit is not None and prompt_len + max_new_tokens > limit:
            raise ValueError(
                f"max_model_len: a prompt of {prompt_len} tokens plus max_new_tokens={max_new_tokens} exceeds "
                f"max_model_len={limit}; raise max_model_len (to max_prompt_len + max_new_tokens) or shorten "
                "the prompt"
            )

    def _to_rollout(self, prompt_ids: list[int], completion, prompt_index: int) -> Rollout:
        response = list(completion.token_ids)
        if completion.logprobs is None or len(completion.logprobs) != len(response):
            raise RuntimeError("vLLM returned no per-token log-probs for a completion; logprobs=0 was requested")
        # vllm/logprobs.py: one ``{token_id: Logprob}`` per position (list or FlatLogprobs, both indexable);
        # the sampled token is always present.
        logprobs = [float(position[tok].logprob) for tok, position in zip(response, completion.logprobs,
                                                                           strict=True)]
        return Rollout(
            prompt_ids=list(prompt_ids),
            response_ids=response,
            text=self.tokenizer.decode(response, skip_special_tokens=True),
            logprobs=logprobs,
            # vllm/outputs.py CompletionOutput.finish_reason: "length" when max_tokens was reached.
            truncated=completion.finish_reason == "length",
            prompt_index=prompt_index,
            meta={"sampler": "vllm", "finish_reason": completion.finish_reason, "weights_version": self.version},
        )

    def _publish_lora(self, model) -> None:
        # vllm/lora/request.py (v0.32.0): ``LoRARequest(lora_name, lora_int_id >= 1, lora_path)``; the id
        # must be unique per adapter, so every update gets a new one.
        from vllm.lora.request import LoRARequest

        assert self.work_dir is not None  # set in __init__ before the engine is built
        path = self.work_dir / f"lora-{self.version}"
        # PEFT writes adapter_config.json + adapter_model.safetensors; only the policy's adapter ("default",
        # see sdpo.adapters) goes to vLLM, not e.g. a teacher adapter living in the same PeftModel.
        model.save_pretrained(str(path), selected_adapters=[_policy_adapter(model)])
        if self._lora_request is not None:
            self._stale_loras.append((self._lora_request.lora_int_id, Path(self._lora_request.lora_path)))
        self._lora_request = LoRARequest(lora_name=f"sdpo-{self.version}", lora_int_id=self.version,
                                         lora_path=str(path))

    def _evict_stale_loras(self) -> None:
        # Done while the engine is awake: removing an adapter writes to its (possibly slept) GPU slots.
        # vllm/v1/engine/llm_engine.py: ``LLMEngine.remove_lora(lora_id) -> bool``.
        for lora_id, path in self._stale_loras:
            self.llm.llm_engine.remove_lora(lora_id)
            shutil.rmtree(path, ignore_errors=True)
        self._stale_loras.clear()

    def _push_full_weights(self, model) -> None:
        # vllm/distributed/weight_transfer/{factory,base,ipc_engine}.py (v0.32.0):
        # ``WeightTransferTrainerFactory.trainer_init(IPCTrainerInitInfo(rank=0), client=..., source=
        # ModuleSource(model))`` then ``send_weights()`` per round (start -> update over CUDA IPC -> finish,
        # which loads through the model's ``load_weights`` with layerwise reload).
        from vllm.distributed.weight_transfer import ModuleSource, WeightTransferTrainerFactory
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        device = _cuda_device_of(model)
        if "weights" in self._sleeping_tags:
            # A level-2 sleep dropped the weights: re-allocate them (vllm/entrypoints/llm.py ``wake_up(tags)``;
            # vllm/v1/worker/gpu_worker.py restores the buffers, not the parameters); the push below fills
            # them. The KV cache stays released until the next generation.
            self._wake_tags(["weights"])
        with torch.cuda.device(device):
            if self._transfer is None:
                self._transfer = WeightTransferTrainerFactory.trainer_init(
                    IPCTrainerInitInfo(rank=0), client=_LLMSyncClient(self.llm), source=ModuleSource(model),
                )
            else:
                self._transfer.source = ModuleSource(model)
            self._transfer.send_weights()
        self._weights_discarded = False
        if not self._sleeping_tags:
            # Cached prefixes were computed with the old weights (sleep already drops them).
            self.llm.reset_prefix_cache()

    def _sleep(self) -> None:
        # vllm/entrypoints/llm.py: ``LLM.sleep(level)``; vllm/v1/executor/abstract.py: sleeping tags are
        # {"weights", "kv_cache"} and ``wake_up(tags)`` must name tags that are asleep.
        self.llm.sleep(level=self._sleep_level)
        self._sleeping_tags = {"weights", "kv_cache"}
        self._weights_discarded = self._sleep_level == 2

    def _wake(self) -> None:
        """Make the engine fully awake with the current policy's weights before a generation."""
        if self._weights_discarded:
            # Full mode after a level-2 sleep with no update_weights since: the re-allocated weights hold no
            # values, push the trainer's (the same push update_weights does; it wakes "weights" first).
            self._push_full_weights(self._model)
        if self._sleeping_tags:
            self._wake_tags(sorted(self._sleeping_tags))

    def _wake_tags(self, tags: list[str]) -> None:
        # vLLM's sleep-mode allocator maps memory outside PyTorch's caching allocator: blocks the trainer freed
        # but still caches would be unavailable to the engine (an OOM while waking). Finish the trainer's
        # queued work, then hand its cached free blocks back to the driver.
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        self.llm.wake_up(tags=list(tags))
        self._sleeping_tags.difference_update(tags)
