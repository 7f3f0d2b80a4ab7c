import pytest
import torch

from llama_ckpt.model import get_model


@pytest.fixture(scope="session")
def tiny():
    return get_model("tiny")


@pytest.fixture(scope="session")
def tiny_sd(tiny):
    return tiny.materialize()


def clone(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in sd.items()}
