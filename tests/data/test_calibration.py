"""Calibration data: packing, padding, sources and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from optimum_blockprune import BlockPruneError
from optimum_blockprune.data.calibration import build_calibration, load_texts


def test_packed_samples_have_no_padding_and_follow_the_text(tokenizer, corpus):
    data = build_calibration(tokenizer, corpus, num_samples=3, seq_len=16)
    assert data.input_ids.shape == (3, 16) and data.num_tokens == 48
    first = tokenizer(corpus[0])["input_ids"]
    assert data.input_ids[0, : len(first)].tolist() == first[:16]


def test_unpacked_samples_are_right_padded(tokenizer, corpus):
    data = build_calibration(tokenizer, corpus, num_samples=4, seq_len=40, pack=False)
    assert data.attention_mask[:, 0].all()
    lengths = data.attention_mask.sum(dim=1)
    assert (lengths < 40).any()
    for row, n in zip(data.input_ids, lengths, strict=True):
        assert torch.all(row[n:] == tokenizer.pad_token_id)


@pytest.mark.parametrize("texts", [[], ["", "   "]])
def test_empty_text_is_refused(tokenizer, texts):
    with pytest.raises(BlockPruneError, match="empty"):
        build_calibration(tokenizer, texts, 2, 8)


def test_too_short_text_is_refused(tokenizer):
    with pytest.raises(BlockPruneError, match="too short") as info:
        build_calibration(tokenizer, ["a few words"], num_samples=4, seq_len=64)
    assert "--num-samples" in str(info.value)


def test_text_sources(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("first doc\nstill first\n\nsecond doc\n")
    assert load_texts(str(txt)) == ["first doc\nstill first", "second doc"]
    jl = tmp_path / "a.jsonl"
    jl.write_text("\n".join(json.dumps({"text": t}) for t in ["x", "y"]))
    assert load_texts(str(jl)) == ["x", "y"]
    with pytest.raises(BlockPruneError, match="not found"):
        load_texts(str(tmp_path / "missing.txt"))
    with pytest.raises(BlockPruneError, match="field"):
        load_texts(str(jl), text_field="body")


def test_chat_template_is_applied_when_asked(tokenizer, corpus):
    import copy

    chat = copy.deepcopy(tokenizer)
    with pytest.raises(BlockPruneError, match="no chat template"):
        build_calibration(chat, corpus, 2, 8, chat_template=True)
    chat.chat_template = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
    data = build_calibration(chat, corpus, num_samples=2, seq_len=8, pack=False, chat_template=True)
    assert data.input_ids[0, 0].item() == chat.bos_token_id  # the template's <s> opens every sample
    plain = build_calibration(tokenizer, corpus, num_samples=2, seq_len=8, pack=False)
    assert not torch.equal(data.input_ids, plain.input_ids)
