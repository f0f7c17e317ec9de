"""Optional dependencies: a feature whose extra is missing says which extra to install, in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from optimum_blockprune.errors import BlockPruneError, require_extra

CLI = str(Path(sys.executable).with_name("optimum-cli"))


def test_require_extra_names_the_extra_and_passes_installed_modules():
    require_extra("json", "eval", "anything")  # installed: no error
    with pytest.raises(BlockPruneError) as info:
        require_extra("no_such_module_for_blockprune", "eval", "evaluating lm-eval tasks (--tasks)")
    message = str(info.value)
    assert "\n" not in message and "pip install 'optimum-blockprune[eval]'" in message
    assert message.startswith("evaluating lm-eval tasks (--tasks) needs the optional dependency")


def test_eval_tasks_without_lm_eval_is_a_one_line_error_before_the_model_loads(tmp_path):
    """lm-eval made unimportable (a shadowing package that raises ImportError, as a missing or
    broken install does): the real CLI refuses with the extra's name, exit 2, no traceback."""
    shadow = tmp_path / "shadow" / "lm_eval"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('lm_eval hidden for this test')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent), "HF_HUB_OFFLINE": "1"}
    model = tmp_path / "model"  # never loaded: the check runs first
    model.mkdir()
    proc = subprocess.run(
        [CLI, "blockprune", "eval", "--model", str(model), "--tasks", "blockprune_mc"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "optimum-blockprune[eval]" in errors[0], proc.stderr
