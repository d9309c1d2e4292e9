"""``sampler: auto | hf | vllm`` on a machine without vLLM or CUDA, and the vLLM options' validation.

Where a test needs vLLM "installed", it puts a stand-in module into ``sys.modules`` for that test only:
selection only imports ``vllm`` and reads ``vllm.LLM``.
"""

import logging
import subprocess
import sys
import types

import pytest
import torch

from sdpo.config import ConfigError
from sdpo.rollout.base import SamplingParams
from sdpo.rollout.hf import HFSampler
from sdpo.rollout.select import make_sampler, resolve_sampler_kind
from sdpo.rollout.vllm import VLLMOptions, VLLMSampler, vllm_lora_rank, vllm_unavailable_reason

needs_no_vllm = pytest.mark.skipif(
    vllm_unavailable_reason() is None, reason="vLLM can run here; these tests cover machines where it cannot"
)


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from sdpo.models import load_model_and_tokenizer

    return load_model_and_tokenizer(tiny_model_path)


@needs_no_vllm
def test_auto_picks_hf_without_vllm_or_cuda(tiny):
    model, tokenizer = tiny
    assert resolve_sampler_kind("auto") == "hf"
    sampler = make_sampler("auto", model, tokenizer, adapter="full", gpu_memory_utilization=0.4)
    assert isinstance(sampler, HFSampler)
    rollouts = sampler.generate([[{"role": "user", "content": "hi"}]], 2, SamplingParams(max_new_tokens=4, seed=0))
    assert len(rollouts) == 2 and all(len(r.logprobs) == len(r.response_ids) for r in rollouts)


@needs_no_vllm
def test_trainer_call_builds_hf_with_its_options(tiny):
    """The call sdpo.trainer makes: HF options go to the HF sampler, vLLM options are validated only."""
    model, tokenizer = tiny
    sampler = make_sampler("auto", model, tokenizer, batch_size=3, max_prompt_len=8, adapter="lora",
                           gpu_memory_utilization=0.5)
    assert isinstance(sampler, HFSampler)
    assert (sampler.batch_size, sampler.max_prompt_len) == (3, 8)
    with pytest.raises(ValueError, match="max_prompt_len"):
        sampler.generate([[{"role": "user", "content": "a question far longer than eight tokens " * 3}]], 1,
                         SamplingParams(max_new_tokens=2))


def test_hf_is_always_hf(tiny):
    model, tokenizer = tiny
    assert resolve_sampler_kind("hf") == "hf"
    assert isinstance(make_sampler("hf", model, tokenizer), HFSampler)


def importable_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    sys.modules["vllm"].LLM = object


class _BrokenVLLM(types.ModuleType):
    """An installed vllm whose engine modules fail to load (a CUDA / torch mismatch, a missing library)."""

    def __getattr__(self, name):
        raise ImportError("libcudart.so.13: cannot open shared object file: No such file or directory")


@needs_no_vllm
@pytest.mark.parametrize("build", ["make_sampler", "VLLMSampler"])
def test_vllm_requested_without_it_says_how_to_fix(tiny, build):
    model, tokenizer = tiny
    with pytest.raises(ConfigError) as err:
        if build == "make_sampler":
            make_sampler("vllm", model, tokenizer)
        else:
            VLLMSampler(model, tokenizer, adapter="full")
    message = str(err.value)
    assert err.value.field == "sampler"
    assert "CUDA" in message and "pip install -e '.[gpu]'" in message


def test_vllm_installed_but_no_cuda_is_reported(monkeypatch, tiny):
    """The branch a GPU image hits when the container does not see the GPU (driver / --gpus missing)."""
    importable_vllm(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = vllm_unavailable_reason()
    assert reason is not None and "no CUDA GPU" in reason
    assert resolve_sampler_kind("auto") == "hf"
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        make_sampler("vllm", *tiny)


def test_auto_picks_vllm_only_for_a_model_on_cuda(monkeypatch, tiny, caplog):
    """A GPU host training on the CPU (device: cpu) must not get the colocated engine."""
    importable_vllm(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_sampler_kind("auto", device="cuda") == "vllm"
    assert resolve_sampler_kind("auto", device=torch.device("cuda", 0)) == "vllm"
    with caplog.at_level(logging.INFO, logger="sdpo.rollout.select"):
        assert resolve_sampler_kind("auto", device="cpu") == "hf"
        sampler = make_sampler("auto", *tiny)  # the tiny model is on the CPU
    assert isinstance(sampler, HFSampler)
    assert any("auto -> hf" in r.getMessage() and "on cpu" in r.getMessage() for r in caplog.records)


def test_auto_does_not_pick_a_broken_install_and_logs_why(monkeypatch, tiny, caplog):
    monkeypatch.setitem(sys.modules, "vllm", _BrokenVLLM("vllm"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with caplog.at_level(logging.INFO, logger="sdpo.rollout.select"):
        assert resolve_sampler_kind("auto", device="cuda") == "hf"
    (record,) = [r for r in caplog.records if r.name == "sdpo.rollout.select"]
    assert record.levelno == logging.WARNING
    assert "importing it failed" in record.getMessage() and "libcudart.so.13" in record.getMessage()
    with pytest.raises(ConfigError, match="libcudart.so.13"):
        resolve_sampler_kind("vllm")


def test_auto_without_vllm_installed(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ModuleNotFoundError(name="vllm")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with caplog.at_level(logging.INFO, logger="sdpo.rollout.select"):
        assert resolve_sampler_kind("auto", device="cuda") == "hf"
    assert any(r.levelno == logging.INFO and "vllm is not installed" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[gpu\]'"):
        resolve_sampler_kind("vllm")


def test_unknown_sampler_kind_lists_the_choices(tiny):
    with pytest.raises(ConfigError, match="'auto', 'hf', 'vllm'") as err:
        make_sampler("sglang", *tiny)
    assert err.value.field == "sampler"


@pytest.mark.parametrize("opts, field", [
    (dict(adapter="qlora"), "adapter"),
    (dict(gpu_memory_utilization=1.5), "gpu_memory_utilization"),
    (dict(gpu_memory_utilization=0), "gpu_memory_utilization"),
    (dict(max_model_len=0), "max_model_len"),
    (dict(lora_rank=1024), "lora_rank"),
    (dict(enable_sleep="yes"), "enable_sleep"),
    (dict(dtype="int8"), "dtype"),
    (dict(gpu_mem=0.5), "gpu_mem"),
])
def test_bad_vllm_options_are_rejected_even_when_hf_is_chosen(tiny, opts, field):
    with pytest.raises(ConfigError) as err:
        make_sampler("auto", *tiny, **opts)
    assert err.value.field == field


def test_options_defaults():
    opts = VLLMOptions()
    assert (opts.adapter, opts.gpu_memory_utilization, opts.enable_sleep) == ("lora", 0.5, True)


@pytest.mark.parametrize("rank, expected", [(1, 1), (2, 8), (8, 8), (9, 16), (33, 64), (300, 320), (512, 512)])
def test_lora_rank_rounds_up_to_a_rank_vllm_serves(rank, expected):
    assert vllm_lora_rank(rank) == expected


def test_lora_rank_beyond_vllm_is_an_error():
    with pytest.raises(ConfigError, match="lora_rank"):
        vllm_lora_rank(513)


def test_importing_the_module_does_not_import_vllm():
    code = ("import sys, sdpo.rollout.vllm, sdpo.rollout.select; "
            "print('vllm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_multi_process_jobs_do_not_get_the_colocated_engine(monkeypatch, tiny):
    importable_vllm(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 2)
    assert resolve_sampler_kind("auto", device="cuda") == "hf"
    with pytest.raises(ConfigError, match="single-GPU jobs"):
        resolve_sampler_kind("vllm")
