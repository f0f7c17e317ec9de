"""Helpers several test folders share: the real CLI in a subprocess, and a stock-transformers reload
script (run in a fresh interpreter without optimum_blockprune)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

CLI = str(Path(sys.executable).with_name("optimum-cli"))
CAL = ["--num-samples", "4", "--seq-len", "16", "--batch-size", "2"]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
CPU_ONLY = {**ENV, "CUDA_VISIBLE_DEVICES": ""}  # the processes talk over gloo even on a GPU machine


def accelerate_cli(*args: str, module: str = "optimum_blockprune.cli") -> list[str]:
    """``accelerate launch`` of two local processes running ``python -m module args``."""
    with socket.socket() as s:  # a free port: other launches may hold the default one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # --multi_gpu is accelerate's torchrun launcher; its --cpu flag would start one process only
    launch = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]
    return [*launch, "-m", module, *args]


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
