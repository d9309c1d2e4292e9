"""Shared fixtures. Tests never touch the developer's var/: everything is built under tmp dirs."""

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """The tiny local model (Qwen2-style, ~2M params), built once per test session."""
    from sdpo.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)
