"""Evaluation: perplexity from every text source, lm-eval tasks from local files offline, the eval CLI."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from optimum_blockprune.energy.scoring import token_losses
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.output.evaluation import eval_data, perplexity

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "examples" / "lm_eval_tasks"
QUESTIONS = len((TASKS / "blockprune_mc" / "questions.jsonl").read_text().splitlines())
CLI = str(Path(sys.executable).with_name("optimum-cli"))


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [CLI, "blockprune", *args], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT
    )


def assert_user_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr


@pytest.fixture
def sources(tmp_path, corpus):
    """The same documents as .txt, .jsonl, .csv, .parquet and a saved dataset folder."""
    import datasets
    import pandas

    docs = corpus[:5]
    (tmp_path / "docs.txt").write_text("\n\n".join(docs))
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    pandas.DataFrame({"body": docs}).to_csv(tmp_path / "docs.csv", index=False)
    pandas.DataFrame({"body": docs}).to_parquet(tmp_path / "docs.parquet")
    datasets.Dataset.from_dict({"body": docs}).save_to_disk(str(tmp_path / "docs_ds"))
    return tmp_path, docs


def test_every_source_gives_the_same_blocks(sources, tokenizer):
    folder, docs = sources
    stream = []
    for doc in docs:
        stream += tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]
    expected = torch.tensor(stream[: len(stream) // 16 * 16]).view(-1, 16)
    for name, column in (
        ("docs.txt", "text"),
        ("docs.jsonl", "body"),
        ("docs.csv", "body"),
        ("docs.parquet", "body"),
        ("docs_ds", "body"),
    ):
        data = eval_data(tokenizer, str(folder / name), column, seq_len=16)
        assert torch.equal(data.input_ids, expected), name
    assert len(eval_data(tokenizer, str(folder / "docs.txt"), seq_len=16, max_samples=2)) == 2
    assert eval_data(tokenizer, str(folder / "docs.txt"), seq_len=10_000).input_ids.shape == (1, len(stream))


def test_perplexity_is_exp_mean_token_loss(sources, tokenizer):
    folder, _ = sources
    model = tiny_model("llama", 2)
    data = eval_data(tokenizer, str(folder / "docs.txt"), seq_len=16)
    with torch.no_grad():
        logits = model(data.input_ids).logits
    ce, mask = token_losses(logits, data.input_ids, data.attention_mask)
    assert perplexity(model, data, batch_size=3) == pytest.approx(
        math.exp(float(ce.sum() / mask.sum())), rel=1e-5
    )


@pytest.mark.parametrize(
    ("name", "column", "content", "message"),
    [
        ("missing.txt", "text", None, "evaluation data not found"),
        ("empty.txt", "text", "\n\n  \n", "holds no text"),
        ("docs.jsonl", "text", '{"body": "x"}\n', "needs a 'text' field"),
        ("docs.csv", "text", "body\nhello\n", "has no column 'text'"),
    ],
)
def test_bad_data_gives_one_line_errors(tmp_path, tokenizer, name, column, content, message):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(BlockPruneError, match=message) as info:
        eval_data(tokenizer, str(tmp_path / name), column, seq_len=16)
    assert "\n" not in str(info.value)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_local_lm_eval_task_runs_offline(tokenizer, no_network):
    from optimum_blockprune.output.lm_eval import run_tasks

    before = os.environ.get("HF_DATASETS_OFFLINE")
    results = run_tasks(tiny_model("llama", 2), tokenizer, ["blockprune_mc"], [TASKS], batch_size=16)
    row = results["blockprune_mc"]
    assert row["samples"] == QUESTIONS >= 40
    assert 0.0 <= row["acc"] <= 1.0 and 0.0 <= row["acc_norm"] <= 1.0
    assert os.environ.get("HF_DATASETS_OFFLINE") == before  # offline mode is switched back
    limited = run_tasks(tiny_model("llama", 2), tokenizer, ["blockprune_mc"], [TASKS], limit=7)
    assert limited["blockprune_mc"]["samples"] == 7


def test_example_questions_are_well_formed():
    rows = [
        json.loads(line) for line in (TASKS / "blockprune_mc" / "questions.jsonl").read_text().splitlines()
    ]
    assert 40 <= len(rows) <= 60
    assert len({r["question"] for r in rows}) == len(rows)
    for row in rows:
        assert len(row["choices"]) == len(set(row["choices"])) == 4 and row["answer"] in range(4)


def test_eval_cli_writes_perplexity_and_task_accuracy(tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "eval.json"
    proc = run(
        "eval",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(text_file),
        "--seq-len",
        "32",
        "--tasks",
        "blockprune_mc",
        "--include-path",
        str(TASKS),
        "--limit",
        "10",
        "--output-json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["perplexity"]["value"] > 1 and result["perplexity"]["tokens"] > 0
    assert result["tasks"]["blockprune_mc"]["samples"] == 10
    assert f"{result['tasks']['blockprune_mc']['acc']:.4f}" in proc.stdout
    assert f"{result['perplexity']['value']:.3f}" in proc.stdout


def test_eval_cli_one_line_errors(tmp_path):
    assert_user_error(run("eval", "--model", str(tmp_path / "nope")), "model folder not found")


def test_unknown_task_is_a_one_line_error():
    from optimum_blockprune.output.lm_eval import task_manager

    with pytest.raises(BlockPruneError, match="unknown lm-eval task 'no_such_task'") as info:
        task_manager(["blockprune_mc", "no_such_task"], [TASKS])
    assert "\n" not in str(info.value)
    with pytest.raises(BlockPruneError, match="task folder not found"):
        task_manager(["blockprune_mc"], [TASKS / "missing"])


@pytest.mark.slow
def test_local_task_on_the_pruned_demo_model(tmp_path):
    """The acceptance check: the local task runs on the pruned demo model offline and reports accuracy."""
    pruned = tmp_path / "pruned"
    prune = [
        "prune",
        "--model",
        "demo",
        "--remove",
        "4",
        "--method",
        "shortgpt",
        "--num-samples",
        "4",
        "--seq-len",
        "64",
    ]
    proc = run(*prune, "--output", str(pruned))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "eval.json"
    proc = run(
        "eval",
        "--model",
        str(pruned),
        "--tasks",
        "blockprune_mc",
        "--include-path",
        str(TASKS),
        "--output-json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    row = json.loads(out.read_text())["tasks"]["blockprune_mc"]
    assert row["samples"] == QUESTIONS and 0.0 <= row["acc"] <= 1.0
