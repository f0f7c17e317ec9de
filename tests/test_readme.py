"""The README's commands: every ``optimum-cli blockprune`` command in it parses with the real
subcommand parser (so no documented flag can drift away), and the quick start runs end to end on
a tiny model in place of the Hub id."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from argparse import ArgumentParser
from pathlib import Path

import pytest

from optimum_blockprune.cli import BlockPruneCommand

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent


def bash_blocks(text: str) -> list[tuple[str, str]]:
    """``(heading of the section, code)`` of every fenced bash block."""
    blocks, heading = [], ""
    for part in re.split(r"(?m)^(```bash\n.*?^```)$", text, flags=re.S):
        if part.startswith("```bash"):
            blocks.append((heading, part[len("```bash\n") : -3]))
        else:
            heads = re.findall(r"(?m)^#+ (.+)$", part)
            heading = heads[-1] if heads else heading
    return blocks


def commands(code: str) -> list[list[str]]:
    """The shell words of each command line (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        line = line.split(" # ")[0].strip()
        if line and not line.startswith("#"):
            out.append(shlex.split(line, comments=True))
    return out


def cli_commands() -> list[list[str]]:
    found = []
    for _, code in bash_blocks(README.read_text()):
        for words in commands(code):
            if words[:2] == ["optimum-cli", "blockprune"] and "..." not in words:
                found.append(words[2:])
            elif "optimum_blockprune.cli" in words and "..." not in words:
                found.append(words[words.index("optimum_blockprune.cli") + 1 :])
    return found


SUBCOMMANDS = {info.name: info.subcommand_class for info in BlockPruneCommand.SUBCOMMANDS}


def test_the_readme_documents_every_subcommand():
    documented = {words[0] for words in cli_commands()}
    assert set(SUBCOMMANDS) <= documented, set(SUBCOMMANDS) - documented


@pytest.mark.parametrize("words", cli_commands(), ids=lambda w: " ".join(w)[:60])
def test_every_readme_command_parses(words):
    parser = ArgumentParser(prog=f"optimum-cli blockprune {words[0]}", exit_on_error=False)
    SUBCOMMANDS[words[0]].parse_args(parser)
    parser.parse_args([os.path.expandvars(w) for w in words[1:]])  # unknown flags / bad values raise


def test_quick_start_runs_on_a_tiny_model(tmp_path, tokenizer):
    """The quick start with a 12-layer tiny model folder in place of the Hub id."""
    from conftest import tiny_model

    model_dir = tmp_path / "model"
    tiny_model("llama", 12).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    code = next(code for heading, code in bash_blocks(README.read_text()) if heading == "Quick start")
    lines = [f"MODEL={model_dir}" if line.startswith("MODEL=") else line for line in code.splitlines()]
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(lines)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "pruned" / "blockprune_config.json").is_file()
    assert (tmp_path / "pruned" / "report.html").is_file()
    assert (tmp_path / "healed" / "config.json").is_file()
    assert "perplexity" in proc.stdout.lower()
