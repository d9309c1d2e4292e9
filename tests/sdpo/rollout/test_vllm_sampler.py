"""The vLLM sampler's own bookkeeping on a CPU, against a minimal fake ``vllm`` package.

The fake implements only the surface ``sdpo.rollout.vllm`` calls, with the vLLM 0.32.0 signatures
(vllm/entrypoints/llm.py, vllm/sampling_params.py, vllm/lora/request.py, vllm/distributed/weight_transfer/),
and only the behaviour our code relies on: completion j of a request is seeded ``seed + j``
(vllm/v1/engine/parallel_sampling.py), greedy requests refuse ``n > 1``, ``sleep(level=2)`` discards the
weights so a wake re-allocates them without values (vllm/device_allocator/sleep_mode_backend.py), and
``wake_up(tags)`` only accepts sleeping tags. It generates nothing real: tokens are a function of the seed,
the prompt, the weights it holds and the LoRA id, and it refuses to generate from discarded weights. These
tests check our code (grouping, seeds, LoRA ids, sleep/wake/push order, memory hand-back, shutdown), not vLLM;
tests/sdpo/rollout/test_vllm_contract.py runs the real engine on a GPU.
"""

import contextlib
import gc
import os
import random
import sys
import tempfile
import types
import warnings
from dataclasses import dataclass, field

import pytest
import torch

from sdpo.config import ConfigError
from sdpo.models import chat_ids, load_model_and_tokenizer
from sdpo.rollout.base import Sampler, SamplingParams

PROMPT = [{"role": "user", "content": "Reverse the input."}]
OTHER = [{"role": "user", "content": "Sum a list."}]
LOG: list[tuple] = []


# -- the fake vllm package --------------------------------------------------------------------------


def _fingerprint(named_tensors) -> float:
    return round(sum(float(t.detach().double().sum()) for _, t in named_tensors), 6)


class FakeSamplingParams:
    def __init__(self, n=1, temperature=1.0, top_p=1.0, top_k=0, seed=None, max_tokens=16, logprobs=None,
                 stop_token_ids=None, detokenize=True):
        if temperature < 1e-5 and n > 1:  # vllm/sampling_params.py _verify_greedy_sampling
            raise ValueError(f"n must be 1 when using greedy sampling, got {n}.")
        self.n, self.temperature, self.top_p, self.top_k, self.seed = n, temperature, top_p, top_k, seed
        self.max_tokens, self.logprobs, self.stop_token_ids = max_tokens, logprobs, stop_token_ids


@dataclass
class FakeLoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = ""


@dataclass
class FakeLogprob:
    logprob: float


@dataclass
class FakeCompletion:
    index: int
    token_ids: list[int]
    logprobs: list[dict[int, FakeLogprob]]
    finish_reason: str = "length"


@dataclass
class FakeRequestOutput:
    outputs: list[FakeCompletion]
    request_id: str = ""
    finished: bool = True


class FakeRequestOutputKind:
    CUMULATIVE, DELTA, FINAL_ONLY = 0, 1, 2


class FakeEngineCore:
    def shutdown(self, timeout=None):
        LOG.append(("shutdown",))


class FakeLLMEngine:
    """The engine loop ``LLM.generate`` runs (vllm/v1/engine/llm_engine.py): ``add_request``, ``step`` (here one
    token per unfinished request; a request's output, FINAL_ONLY, comes with the step that finishes it),
    ``has_unfinished_requests``, ``abort_request``."""

    def __init__(self, llm):
        self._llm = llm
        self.engine_core = FakeEngineCore()
        self.pending: dict[str, list] = {}

    def add_request(self, request_id, prompt, params, arrival_time=None, lora_request=None, **kwargs):
        assert request_id not in self.pending and params.output_kind == FakeRequestOutputKind.FINAL_ONLY
        self._llm._check_can_generate()
        self.pending[request_id] = [prompt, params, lora_request, 0]

    def has_unfinished_requests(self) -> bool:
        return bool(self.pending)

    def step(self):
        LOG.append(("step",))
        out = []
        for rid, entry in list(self.pending.items()):
            entry[3] += 1
            if entry[3] >= entry[1].max_tokens:
                del self.pending[rid]
                prompt, sp, lora_request = entry[:3]
                out.append(FakeRequestOutput(self._llm._complete(prompt, sp, lora_request), rid, True))
        return out

    def abort_request(self, request_ids, internal=False):
        LOG.append(("abort", list(request_ids)))
        for rid in request_ids:
            self.pending.pop(rid, None)

    def remove_lora(self, lora_id: int) -> bool:
        LOG.append(("remove_lora", lora_id))
        found = lora_id in self._llm.loras
        self._llm.loras.discard(lora_id)
        return found

    def list_loras(self) -> set[int]:
        return set(self._llm.loras)

    def is_sleeping(self) -> bool:
        return bool(self._llm.sleeping)


class FakeLLM:
    fail_init = False

    def __init__(self, model, **kwargs):
        if FakeLLM.fail_init:
            raise RuntimeError("fake engine failed to start")
        LOG.append(("LLM", model, kwargs))
        self.kwargs = kwargs
        self.llm_engine = FakeLLMEngine(self)
        self.weights: object = "checkpoint"  # what the engine samples from
        self.sleeping: set[str] = set()
        self.loras: set[int] = set()
        self._incoming = None
        self._unseeded = random.Random(0)

    def _check_can_generate(self):
        if self.sleeping:
            raise RuntimeError(f"generate while asleep ({sorted(self.sleeping)})")
        if self.weights in (None, "garbage"):
            raise RuntimeError("generate from discarded weights: nothing was pushed after the level-2 wake")

    def _complete(self, prompt, sp, lora_request):
        lora_id = None if lora_request is None else lora_request.lora_int_id
        if lora_request is not None:
            assert os.path.exists(os.path.join(lora_request.lora_path, "adapter_config.json"))
            self.loras.add(lora_id)
        completions = []
        for j in range(sp.n):
            seed = None if sp.seed is None else sp.seed + j  # vllm/v1/engine/parallel_sampling.py
            rng = self._unseeded if seed is None else random.Random(
                f"{seed}/{prompt['prompt_token_ids']}/{self.weights}/{lora_id}")
            tokens = [rng.randrange(100, 1000) for _ in range(sp.max_tokens)]
            completions.append(FakeCompletion(j, tokens, [{t: FakeLogprob(-1.0)} for t in tokens]))
        return list(reversed(completions))  # any order; ``index`` tells

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, priority=None):
        self._check_can_generate()
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        assert len(params) == len(prompts)
        lora_id = None if lora_request is None else lora_request.lora_int_id
        LOG.append(("generate", [p.seed for p in params], [p.n for p in params], lora_id, self.weights))
        return [FakeRequestOutput(self._complete(prompt, sp, lora_request))
                for prompt, sp in zip(prompts, params, strict=True)]

    def sleep(self, level=1, mode="abort"):
        LOG.append(("sleep", level))
        assert not self.sleeping, "sleep while asleep"
        self.sleeping = {"weights", "kv_cache"}
        if level == 2:
            self.weights = None

    def wake_up(self, tags=None):
        tags = sorted(self.sleeping) if tags is None else list(tags)
        LOG.append(("wake_up", tuple(tags)))
        assert tags and set(tags) <= self.sleeping, f"wake_up({tags}) but asleep: {sorted(self.sleeping)}"
        if "weights" in tags and self.weights is None:
            self.weights = "garbage"  # re-allocated, values not restored
        self.sleeping -= set(tags)
        return not self.sleeping

    def reset_prefix_cache(self, reset_running_requests=False, reset_connector=False):
        LOG.append(("reset_prefix_cache",))
        return True

    # vllm/entrypoints/rl/offline.py RLOfflineMixin
    def init_weight_transfer_engine(self, request):
        LOG.append(("init_weight_transfer_engine", request.init_info))

    def start_weight_update(self):
        assert "weights" not in self.sleeping, "weight update into sleeping weights"
        self._incoming = None

    def update_weights(self, request):
        self._incoming = request.update_info["fingerprint"]

    def finish_weight_update(self, weight_version=None):
        LOG.append(("push", self._incoming))
        self.weights = self._incoming


class FakeModuleSource:
    def __init__(self, module):
        self._module = module

    def __iter__(self):
        return iter(self._module.named_parameters())


class FakeTrainerEngine:
    def __init__(self, client, source):
        self.client, self.source = client, source

    def send_weights(self):
        self.client.start_weight_update()
        self.client.update_weights({"fingerprint": _fingerprint(self.source)})
        self.client.finish_weight_update()

    def shutdown(self):
        LOG.append(("transfer_shutdown",))


class FakeTrainerFactory:
    @classmethod
    def trainer_init(cls, init_info, *, client, source=None):
        assert init_info.rank == 0
        client.init_weight_transfer_engine({"packed": init_info.packed})
        return FakeTrainerEngine(client, source)


@dataclass
class FakeIPCTrainerInitInfo:
    rank: int = field(kw_only=True)
    packed: bool = False


@dataclass
class FakeInitRequest:
    init_info: dict = field(default_factory=dict)


@dataclass
class FakeUpdateRequest:
    update_info: dict = field(default_factory=dict)


@dataclass
class FakeWeightTransferConfig:
    backend: str = "nccl"


def _fake_vllm_modules() -> dict[str, types.ModuleType]:
    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m

    return {
        "vllm": module("vllm", LLM=FakeLLM, SamplingParams=FakeSamplingParams, TokensPrompt=dict),
        "vllm.config": module("vllm.config", WeightTransferConfig=FakeWeightTransferConfig),
        "vllm.sampling_params": module("vllm.sampling_params", RequestOutputKind=FakeRequestOutputKind),
        "vllm.lora": module("vllm.lora"),
        "vllm.lora.request": module("vllm.lora.request", LoRARequest=FakeLoRARequest),
        "vllm.distributed": module("vllm.distributed"),
        "vllm.distributed.weight_transfer": module(
            "vllm.distributed.weight_transfer", ModuleSource=FakeModuleSource,
            WeightTransferTrainerFactory=FakeTrainerFactory),
        "vllm.distributed.weight_transfer.base": module(
            "vllm.distributed.weight_transfer.base", WeightTransferInitRequest=FakeInitRequest,
            WeightTransferUpdateRequest=FakeUpdateRequest),
        "vllm.distributed.weight_transfer.ipc_engine": module(
            "vllm.distributed.weight_transfer.ipc_engine", IPCTrainerInitInfo=FakeIPCTrainerInitInfo),
    }


@pytest.fixture()
def fake_vllm(monkeypatch, tmp_path):
    """Install the fake package and a CUDA-looking torch for one test; everything is restored after it."""
    import sdpo.rollout.vllm as sampler_module

    for name, mod in _fake_vllm_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: LOG.append(("synchronize",)))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: LOG.append(("empty_cache",)))
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(sampler_module, "_cuda_device_of", lambda model: torch.device("cpu"))
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # restored after the test
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the sampler's temp dirs land here
    monkeypatch.setattr(FakeLLM, "fail_init", False)
    LOG.clear()
    yield sampler_module.VLLMSampler
    LOG.clear()


@pytest.fixture()
def model_tok(tiny_model_path):
    return load_model_and_tokenizer(tiny_model_path)


def events(*names):
    return [e for e in LOG if e[0] in names]


def assert_memory_handed_back_before_every_wake():
    wakes = [k for k, e in enumerate(LOG) if e[0] == "wake_up"]
    assert wakes
    for k in wakes:
        assert LOG[k - 2:k] == [("synchronize",), ("empty_cache",)], LOG[max(k - 3, 0):k + 1]


def work_dirs(tmp_path):
    return sorted(p.name for p in tmp_path.glob("sdpo-vllm-*"))


# -- tests ------------------------------------------------------------------------------------------


def test_engine_options_and_grouping_with_one_seed_per_rollout(fake_vllm, model_tok):
    model, tok = model_tok
    with fake_vllm(model, tok, adapter="full", gpu_memory_utilization=0.37, max_model_len=512) as sampler:
        assert isinstance(sampler, Sampler)
        kwargs = events("LLM")[0][2]
        assert (kwargs["gpu_memory_utilization"], kwargs["max_model_len"]) == (0.37, 512)
        assert kwargs["enable_sleep_mode"] and kwargs["skip_tokenizer_init"]
        assert kwargs["logprobs_mode"] == "processed_logprobs"
        assert kwargs["weight_transfer_config"].backend == "ipc"
        LOG.clear()

        rollouts = sampler.generate([PROMPT, PROMPT, OTHER], 3, SamplingParams(max_new_tokens=6, seed=7))
        assert [r.prompt_index for r in rollouts] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        (_, seeds, ns, _, _), = events("generate")
        assert (seeds, ns) == ([7, 10, 13], [3, 3, 3])
        assert all(r.prompt_ids == chat_ids(tok, [PROMPT, PROMPT, OTHER][r.prompt_index]) for r in rollouts)
        assert all(len(r.logprobs) == len(r.response_ids) == 6 and r.truncated for r in rollouts)
        # the same question twice in one batch: six different rollouts, not two copies of three
        assert len({tuple(r.response_ids) for r in rollouts[:6]}) == 6

        LOG.clear()
        greedy = sampler.generate([PROMPT, OTHER], 2, SamplingParams(max_new_tokens=4, temperature=0.0, seed=7))
        assert [r.prompt_index for r in greedy] == [0, 0, 1, 1]
        (_, seeds, ns, _, _), = events("generate")
        assert (seeds, ns) == ([7, 8, 9, 10], [1, 1, 1, 1])  # vLLM refuses n > 1 when greedy

        unseeded = sampler.generate([PROMPT], 2, SamplingParams(max_new_tokens=4))
        assert events("generate")[-1][1] == [None]
        assert len(unseeded) == 2


def test_full_mode_repushes_weights_after_a_level2_sleep(fake_vllm, model_tok):
    model, tok = model_tok
    params = SamplingParams(max_new_tokens=4, seed=1)
    current = _fingerprint(model.named_parameters())
    with fake_vllm(model, tok, adapter="full") as sampler:
        assert events("push") == [("push", current)]
        sampler.generate([PROMPT], 2, params)  # awake since construction: no wake, no push
        assert [e[0] for e in events("generate", "sleep", "wake_up", "push")] == ["push", "generate", "sleep"]
        assert events("sleep") == [("sleep", 2)]

        # a second generation with no update in between (test-time baseline, multi-turn round, ...)
        LOG.clear()
        sampler.generate([PROMPT], 2, params)
        assert [e for e in LOG if e[0] != "reset_prefix_cache"] == [
            ("synchronize",), ("empty_cache",), ("wake_up", ("weights",)), ("push", current),
            ("synchronize",), ("empty_cache",), ("wake_up", ("kv_cache",)),
            ("generate", [1], [2], None, current), ("sleep", 2)]

        # an optimizer step: update_weights pushes once; the next wake must not push again
        with torch.no_grad():
            next(model.parameters()).add_(0.25)
        updated = _fingerprint(model.named_parameters())
        assert updated != current
        LOG.clear()
        sampler.update_weights(model)
        sampler.generate([PROMPT], 2, params)
        assert [e for e in LOG if e[0] != "reset_prefix_cache"] == [
            ("synchronize",), ("empty_cache",), ("wake_up", ("weights",)), ("push", updated),
            ("synchronize",), ("empty_cache",), ("wake_up", ("kv_cache",)),
            ("generate", [1], [2], None, updated), ("sleep", 2)]
        assert_memory_handed_back_before_every_wake()


def test_full_mode_without_sleep_never_wakes(fake_vllm, model_tok):
    model, tok = model_tok
    with fake_vllm(model, tok, adapter="full", enable_sleep=False) as sampler:
        for _ in range(2):
            sampler.generate([PROMPT], 1, SamplingParams(max_new_tokens=2))
        sampler.update_weights(model)
        assert not events("sleep", "wake_up")
        assert len(events("push")) == 2 and events("reset_prefix_cache")  # stale prefixes dropped on a push


def test_lora_ids_are_fresh_after_each_update_and_old_adapters_removed(fake_vllm, model_tok):
    from sdpo.adapters import apply_adapter

    base, tok = model_tok
    model = apply_adapter(base, "lora", r=8, alpha=16)
    params = SamplingParams(max_new_tokens=4, seed=3)
    with fake_vllm(model, tok, adapter="lora") as sampler:
        kwargs = events("LLM")[0][2]
        assert (kwargs["enable_lora"], kwargs["max_lora_rank"], kwargs["max_loras"]) == (True, 8, 1)
        work = sampler.work_dir
        sampler.generate([PROMPT], 2, params)
        assert events("generate")[-1][3] == 1 and events("sleep") == [("sleep", 1)]

        LOG.clear()
        sampler.update_weights(model)
        sampler.update_weights(model)  # two steps before the next generation
        sampler.generate([PROMPT], 2, params)
        assert [e for e in LOG if e[0] in ("wake_up", "remove_lora", "generate", "sleep")] == [
            ("wake_up", ("kv_cache", "weights")), ("remove_lora", 1), ("remove_lora", 2),
            ("generate", [3], [2], 3, "checkpoint"), ("sleep", 1)]
        assert sampler.llm.llm_engine.list_loras() == {3}
        assert sorted(p.name for p in work.glob("lora-*")) == ["lora-3"]
        assert not events("push")  # level 1 keeps the base weights: nothing to re-push

        LOG.clear()
        sampler.generate([PROMPT], 2, params)  # no update: same adapter, nothing removed
        assert events("generate")[-1][3] == 3 and not events("remove_lora")
        assert_memory_handed_back_before_every_wake()


def test_close_shuts_the_engine_down_and_deletes_the_work_dir(fake_vllm, model_tok, tmp_path):
    model, tok = model_tok
    sampler = fake_vllm(model, tok, adapter="full")
    assert len(work_dirs(tmp_path)) == 1
    sampler.close()
    assert events("transfer_shutdown", "shutdown") == [("transfer_shutdown",), ("shutdown",)]
    assert work_dirs(tmp_path) == [] and sampler.llm is None
    sampler.close()  # idempotent
    assert len(events("shutdown")) == 1
    with pytest.raises(RuntimeError, match="closed"):
        sampler.generate([PROMPT], 1, SamplingParams(max_new_tokens=2))
    with pytest.raises(RuntimeError, match="closed"):
        sampler.update_weights(model)

    LOG.clear()
    with fake_vllm(model, tok, adapter="full"):
        pass
    assert len(events("shutdown")) == 1 and work_dirs(tmp_path) == []

    LOG.clear()
    forgotten = fake_vllm(model, tok, adapter="full")
    del forgotten
    gc.collect()
    assert len(events("shutdown")) == 1 and work_dirs(tmp_path) == []


def test_a_failed_start_leaks_no_work_dir(fake_vllm, model_tok, tmp_path, monkeypatch):
    model, tok = model_tok
    monkeypatch.setattr(FakeLLM, "fail_init", True)
    with pytest.raises(RuntimeError, match="failed to start"):
        fake_vllm(model, tok, adapter="full")
    assert work_dirs(tmp_path) == []

    # the engine starts but the first push fails: the engine is shut down too
    monkeypatch.setattr(FakeLLM, "fail_init", False)
    monkeypatch.setattr(FakeTrainerEngine, "send_weights", lambda self: (_ for _ in ()).throw(OSError("ipc")))
    with pytest.raises(OSError, match="ipc"):
        fake_vllm(model, tok, adapter="full")
    assert events("shutdown") == [("shutdown",)] and work_dirs(tmp_path) == []


def test_max_model_len_is_enforced_before_the_engine_wakes(fake_vllm, model_tok):
    model, tok = model_tok
    with pytest.raises(ConfigError) as err:
        fake_vllm(model, tok, adapter="full", max_prompt_len=64, max_model_len=64)
    assert err.value.field == "max_model_len"
    with fake_vllm(model, tok, adapter="full", max_model_len=40) as sampler:
        sampler.generate([PROMPT], 1, SamplingParams(max_new_tokens=4))
        LOG.clear()
        with pytest.raises(ValueError, match="max_model_len=40"):
            sampler.generate([PROMPT], 1, SamplingParams(max_new_tokens=64))
        assert not events("wake_up", "generate", "push")


def test_truncated_sampling_warns_once_about_rollout_correction(fake_vllm, model_tok):
    model, tok = model_tok
    with fake_vllm(model, tok, adapter="full") as sampler:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sampler.generate([PROMPT], 1, SamplingParams(max_new_tokens=2))
            assert not caught
            for _ in range(2):
                sampler.generate([PROMPT], 1, SamplingParams(max_new_tokens=2, top_p=0.9, top_k=20))
        assert len(caught) == 1 and issubclass(caught[0].category, RuntimeWarning)
        assert "top_p=0.9 and top_k=20" in str(caught[0].message)
        assert "rollout correction" in str(caught[0].message)


def test_with_should_stop_the_engine_loop_gives_what_generate_gives(fake_vllm, model_tok):
    """With ``should_stop`` the sampler runs ``LLM.generate``'s engine loop itself (add_request, step): never
    asked to stop, it returns exactly the rollouts ``generate`` returns, in the same order."""
    model, tok = model_tok
    params = SamplingParams(max_new_tokens=6, seed=5)
    with fake_vllm(model, tok, adapter="full", enable_sleep=False) as plain:
        expected = plain.generate([PROMPT, OTHER], 3, params)
    asked = []
    with fake_vllm(model, tok, adapter="full", enable_sleep=False,
                   should_stop=lambda: asked.append(1) or False) as stoppable:
        LOG.clear()
        got = stoppable.generate([PROMPT, OTHER], 3, params)
    assert [r.response_ids for r in got] == [r.response_ids for r in expected]
    assert [r.prompt_index for r in got] == [0, 0, 0, 1, 1, 1]
    assert not events("generate") and len(events("step")) == 6 and len(asked) == 6


def test_a_stop_aborts_the_calls_requests_and_raises(fake_vllm, model_tok):
    from sdpo.callbacks import StopRequested

    model, tok = model_tok
    asked = []
    with fake_vllm(model, tok, adapter="full", enable_sleep=False,
                   should_stop=lambda: asked.append(1) or len(asked) > 3) as sampler:
        LOG.clear()
        with pytest.raises(StopRequested):
            sampler.generate([PROMPT, OTHER], 2, SamplingParams(max_new_tokens=1000, seed=5))
        assert len(events("step")) == 3  # asked before every step; the 4th answer was stop
        (abort,) = events("abort")
        assert len(abort[1]) == 2 and not sampler.llm.llm_engine.has_unfinished_requests()
        # the engine serves the next call
        sampler.should_stop = lambda: False
        assert len(sampler.generate([PROMPT], 2, SamplingParams(max_new_tokens=4, seed=1))) == 2
