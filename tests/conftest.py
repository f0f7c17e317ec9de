"""Shared fixtures: tiny randomly initialised Llama-family models and an offline tokenizer."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CORPUS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A small model learns to predict the next word of a sentence.",
    "Transformers stack layers of attention and feed forward blocks.",
    "Pruning removes whole blocks so the network becomes shallower and faster.",
    "Calibration text tells us which layers the model can live without.",
] * 20


def tiny_config(model_type: str = "llama", layers: int = 6):
    """A tiny random config of a Llama-family architecture."""
    from architectures import COMMON
    from transformers import AutoConfig

    kwargs = dict(COMMON, num_hidden_layers=layers)
    if model_type == "qwen3":
        kwargs["layer_types"] = [
            "full_attention" if i % 2 == 0 else "sliding_attention" for i in range(layers)
        ]
        kwargs["sliding_window"] = 8
        kwargs["use_sliding_window"] = True
    if model_type == "mistral":
        kwargs["sliding_window"] = 16
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str = "llama", layers: int = 6, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, layers))
    # Random init gives near-zero branch outputs; scale up so every block matters in tests.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.mul_(8.0)
    return model.eval()


@pytest.fixture(scope="session")
def tokenizer():
    """A 300-token BPE tokenizer trained in memory on a tiny corpus (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<s>", "<unk>"])
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="<unk>"
    )


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return list(CORPUS)


@pytest.fixture
def tiny_model_dir(tmp_path, tokenizer):
    """A saved tiny Llama folder with tokenizer, as a user would have on disk."""
    path = tmp_path / "tiny-llama"
    tiny_model("llama", 6).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def text_file(tmp_path):
    """The tiny corpus as a calibration / training text file."""
    path = tmp_path / "cal.txt"
    path.write_text("\n\n".join(CORPUS))
    return path
