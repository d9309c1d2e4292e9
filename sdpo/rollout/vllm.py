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
(weights and KV cache dropped) in full mode, where the next update overwrites every weight anyway.

Prompts are tokenized with *our* tokenizer (``sdpo.models.chat_ids``) and passed to vLLM as token ids, and
responses are decoded with it, so token ids and text match the HF sampler exactly; vLLM's tokenizer is never
loaded (``skip_tokenizer_init``). Per-token log-probs are those of the sampled token after temperature /
top-k / top-p (``logprobs_mode="processed_logprobs"``, as the reference's rollout config), which is what
``Rollout.logprobs`` promises and what rollout correction compares with the trainer.

Scope: single-GPU jobs (the engine shares the trainer's GPU; multi-process ddp/fsdp jobs use the HF
sampler). Full-weight pushes send the trainer's ``named_parameters()`` to vLLM's ``load_weights``, which
expects checkpoint names: right for dense architectures (Qwen2/Qwen3, Llama, ...), where transformers'
in-memory names are the checkpoint's; MoE models whose experts transformers fuses in memory are not covered.
LoRA adapters are served by vLLM's LoRA kernels, which support the attention and MLP projections (the
default ``sdpo.adapters`` targets), not ``modules_to_save``.

Every vLLM API used here was read from the v0.32.0 wheel's source; the file is cited next to each use.
``vllm`` is imported only inside functions, so this module imports without it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdpo.config import ConfigError, build_dataclass
from sdpo.models import chat_ids
from sdpo.rollout.base import Rollout, SamplingParams

ADAPTERS = ("lora", "full")
# vllm/config/lora.py (v0.32.0): ``MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]``.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
INSTALL_HINT = (
    "install the gpu extra: pip install -e '.[gpu]' (vllm==0.32.0, which needs an NVIDIA GPU with CUDA; "
    "the HF sampler works everywhere: sampler: hf)"
)


def vllm_unavailable_reason() -> str | None:
    """None when a vLLM engine can be started here, else why not (in words, with the fix)."""
    if importlib.util.find_spec("vllm") is None:
        return f"vllm is not installed; {INSTALL_HINT}"
    if not torch.cuda.is_available():
        return "vllm is installed but no CUDA GPU is visible (torch.cuda.is_available() is False); " \
               "vLLM sampling needs an NVIDIA GPU with CUDA, use sampler: hf on this machine"
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        return "this is a multi-process (ddp/fsdp) job; the colocated vLLM sampler serves single-GPU jobs " \
               "(distributed: none), use sampler: hf here"
    return None


@dataclass(frozen=True)
class VLLMOptions:
    """Settings of the colocated vLLM engine (``sampler: vllm``).

    adapter: "lora" (the trainer's model is a PEFT LoRA model; adapters are hot-swapped) or "full" (all
        weights train; they are pushed into the engine in place).
    gpu_memory_utilization: fraction of the GPU vLLM may take for weights + KV cache, in (0, 1]. The trainer
        needs the rest.
    max_model_len: longest prompt + response the engine accepts; None = the model's own limit.
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
        if self.adapter not in ADAPTERS:
            raise ConfigError("adapter", f"got {self.adapter!r}; allowed values are 'lora', 'full'")
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
    the HF sampler does. Engine options: ``VLLMOptions``.
    """

    def __init__(self, model, tokenizer, *, max_prompt_len: int | None = None, **options: Any) -> None:
        self.options: VLLMOptions = build_dataclass(VLLMOptions, options)
        if max_prompt_len is not None and (isinstance(max_prompt_len, bool) or not isinstance(max_prompt_len, int)
                                           or max_prompt_len < 1):
            raise ConfigError("max_prompt_len", f"got {max_prompt_len!r}; expected a positive integer or null")
        self.max_prompt_len = max_prompt_len
        reason = vllm_unavailable_reason()
        if reason is not None:
            raise ConfigError("sampler", f"got 'vllm' but {reason}")
        opts = self.options
        if opts.adapter == "lora" and not _is_peft(model):
            raise ConfigError("adapter", "got 'lora' but the model is not a PEFT LoRA model; wrap it with "
                              "peft.get_peft_model or use adapter='full'")
        if opts.adapter == "full" and _is_peft(model):
            raise ConfigError("adapter", "got 'full' but the model is a PEFT model; use adapter='lora' (or "
                              "merge the adapter first)")
        if opts.adapter == "full":
            _cuda_device_of(model)  # fail before an engine is started
        self.tokenizer = tokenizer
        self._own_work_dir = opts.work_dir is None
        self.work_dir = Path(opts.work_dir or tempfile.mkdtemp(prefix="sdpo-vllm-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.stop_token_ids = self._stop_ids(model, tokenizer)
        self.version = 0  # incremented by every update_weights; it is also the LoRA id in use
        self._lora_request = None
        self._stale_loras: list[tuple[int, Path]] = []
        self._transfer = None  # trainer-side weight-transfer engine (full mode), created on first push
        self._sleeping_tags: set[str] = set()
        self._sleep_level = 1 if opts.adapter == "lora" else 2

        base = model.get_base_model() if opts.adapter == "lora" else model
        self.model_path = self._checkpoint_dir(model, base, tokenizer)
        dtype = opts.dtype or str(next(base.parameters()).dtype).removeprefix("torch.")
        self.llm = self._build_engine(model, dtype)
        # The engine must sample from the trainer's *current* policy from the first call: publish the adapter
        # (LoRA) or push the weights (full; they may differ from the checkpoint on disk after a resume).
        try:
            self.update_weights(model)
        except BaseException:
            self.close()
            raise

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
        """``n`` rollouts per prompt, grouped: result[i * n + j] is the j-th rollout of prompts[i]."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: got {n!r}; expected a positive integer")
        if not prompts:
            return []
        from vllm import SamplingParams as VSamplingParams
        from vllm import TokensPrompt

        self._wake()
        self._evict_stale_loras()
        prompt_ids = [self._prompt_ids(messages) for messages in prompts]
        # vllm/sampling_params.py (v0.32.0) refuses n > 1 with greedy decoding (temperature < 1e-5), so a
        # greedy group is sent as n requests of one completion each.
        greedy = params.temperature < 1e-5
        copies, per_request = (n, 1) if greedy else (1, n)
        # ``logprobs=0`` returns the sampled token's log-prob only; ``top_k=0`` disables top-k;
        # ``detokenize=False`` because we decode with our tokenizer.
        sp = VSamplingParams(
            n=per_request,
            temperature=float(params.temperature),
            top_p=float(params.top_p),
            top_k=int(params.top_k) if params.top_k else 0,
            seed=params.seed,
            max_tokens=int(params.max_new_tokens),
            logprobs=0,
            stop_token_ids=list(self.stop_token_ids),
            detokenize=False,
        )
        # vllm/inputs/llm.py: ``TokensPrompt(prompt_token_ids=...)``; vllm/entrypoints/llm.py:
        # ``generate(prompts, sampling_params, *, use_tqdm, lora_request)`` returns outputs in prompt order.
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids for _ in range(copies)], sp,
            use_tqdm=False, lora_request=self._lora_request,
        )
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
        self.version += 1
        if self.options.adapter == "lora":
            self._publish_lora(model)
        else:
            self._push_full_weights(model)

    def close(self) -> None:
        """Shut the engine down and delete what this sampler wrote."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            # vllm/v1/engine/llm_engine.py: ``LLMEngine.engine_core`` (an EngineCoreClient with ``shutdown``).
            llm.llm_engine.engine_core.shutdown()
            self.llm = None
        if self._transfer is not None:
            self._transfer.shutdown()
            self._transfer = None
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # -- helpers ------------------------------------------------------------------------------------

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        ids = chat_ids(self.tokenizer, messages)
        if self.max_prompt_len is not None and len(ids) > self.max_prompt_len:
            raise ValueError(
                f"max_prompt_len: prompt has {len(ids)} tokens, more than max_prompt_len={self.max_prompt_len}; "
                "raise max_prompt_len or shorten the question"
            )
        return ids

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
            # Level-2 sleep dropped the weights; re-allocate them (vllm/entrypoints/llm.py ``wake_up(tags)``),
            # the KV cache stays released until the next generation.
            self.llm.wake_up(tags=["weights"])
            self._sleeping_tags.discard("weights")
        with torch.cuda.device(device):
            if self._transfer is None:
                self._transfer = WeightTransferTrainerFactory.trainer_init(
                    IPCTrainerInitInfo(rank=0), client=_LLMSyncClient(self.llm), source=ModuleSource(model),
                )
            else:
                self._transfer.source = ModuleSource(model)
            self._transfer.send_weights()
        if not self._sleeping_tags:
            # Cached prefixes were computed with the old weights (sleep already drops them).
            self.llm.reset_prefix_cache()

    def _sleep(self) -> None:
        # vllm/entrypoints/llm.py: ``LLM.sleep(level)``; vllm/v1/executor/abstract.py: sleeping tags are
        # {"weights", "kv_cache"} and ``wake_up(tags)`` must name tags that are asleep.
        self.llm.sleep(level=self._sleep_level)
        self._sleeping_tags = {"weights", "kv_cache"}

    def _wake(self) -> None:
        if self._sleeping_tags:
            self.llm.wake_up(tags=sorted(self._sleeping_tags))
            self._sleeping_tags.clear()
