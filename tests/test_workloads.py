"""The two real workloads run end to end from examples/ (at their tiny scale) and say what they measured."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from spectra.errors import InvalidInputError
from spectra.workloads.resnet import SmallResNet
from spectra.workloads.text import decode, load_corpus, sequence_batches
from spectra.workloads.tiny_gpt import TinyGPT

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_language_model_example(capsys):
    r = _example("transformer_lm").main(["--scale", "tiny"])
    assert "top-4 of H" in capsys.readouterr().out
    assert r["train"]["final_loss"] < r["train"]["initial_loss"] and r["train"]["converged"] is False
    top = np.array(r["top_eigenvalues"])
    assert top.size == 4 and np.all(np.diff(top) <= 0) and top[0] > 0
    assert r["slq_range"][1] == pytest.approx(top[0], rel=0.05)  # SLQ's top node finds the top eigenvalue
    assert max(r["ggn_top_eigenvalues"]) <= top[0] * (1 + 1e-6) or r["ggn_share_of_top"][0] < 1
    assert r["top_products"] > 0 and r["slq_products"] > 0 and r["product_gradient_ratio"] > 0


def test_resnet_example(capsys):
    r = _example("resnet_batchnorm").main(["--scale", "tiny"])
    assert "finite differences" in capsys.readouterr().out
    errors = np.array(r["finite_difference"]["relative_errors"])  # [direction, eps]
    assert errors[:, -1].max() <= 1e-6
    assert np.all(errors[:, 1:] <= errors[:, :-1] / 30)  # shrinking as eps^2: 100x per decade
    assert r["torch_func_hessian_error"]["relative_error"] > 1e-3
    assert r["eval"]["products"] == r["batch_statistics"]["products"] == r["num_params"]
    assert r["eval"]["top_eigenvalues"][0] != pytest.approx(r["batch_statistics"]["top_eigenvalues"][0], rel=1e-3)


def test_corpus_batches_are_ragged_dicts_in_the_hugging_face_convention():
    corpus = load_corpus(max_chars=5000)
    batches = sequence_batches(corpus, seq_len=24, batch_size=4)
    b = batches[0]
    assert sorted(b) == ["input_ids", "labels"] and b["input_ids"].shape == (4, 24)
    lengths = (b["labels"] != -100).sum(1)
    assert len(set(lengths.tolist())) > 1  # ragged
    assert torch.equal(b["labels"][b["labels"] != -100], b["input_ids"][b["labels"] != -100])
    # cut at line ends (a line longer than a sequence is truncated)
    assert sum(decode(row).endswith("\n") for batch in batches for row in batch["input_ids"]) >= 10
    with pytest.raises(InvalidInputError, match="not in"):
        load_corpus(files=("no_such_module.py",))


@pytest.mark.parametrize("build,message", [
    (lambda: TinyGPT(10, d_model=6, num_heads=4), "multiple of num_heads"),
    (lambda: TinyGPT(10, d_model=4, num_heads=2, max_len=4)(torch.zeros(1, 5, dtype=torch.long)), "max_len"),
    (lambda: SmallResNet(activation="gelu"), "activation must be one of"),
], ids=["heads", "too-long", "activation"])
def test_workload_models_refuse_bad_arguments(build, message):
    with pytest.raises(InvalidInputError, match=message):
        build()
