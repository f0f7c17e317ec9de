"""Helpers several test folders share: the real CLI in a subprocess, and a stock-transformers reload
script (run in a fresh interpreter without optimum_blockprune)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

CLI = str(Path(sys.executable).with_name("optimum-cli"))
CAL = ["--num-samples", "4", "--seq-len", "16", "--batch-size", "2"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [CLI, "blockprune", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def assert_user_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr


RELOAD = textwrap.dedent(
    """
    import json, sys, torch
    from transformers import AutoModelForCausalLM
    model, info = AutoModelForCausalLM.from_pretrained(sys.argv[1], output_loading_info=True)
    ids = torch.tensor(json.loads(sys.argv[2]))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert "optimum_blockprune" not in sys.modules
    print(json.dumps({"missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
                      "logits": logits.tolist(), "layers": model.config.num_hidden_layers}))
    """
)
