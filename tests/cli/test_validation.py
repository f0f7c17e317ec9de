"""Bad requests are refused before any weights load: through the real ``optimum-cli``, with a model
folder that holds a valid config.json and NO weights (a check that came after loading would fail
with a different message), exit status 2, one ``error:`` line naming the flag, nothing written."""

from __future__ import annotations

import time

import pytest
from conftest import tiny_config
from helpers import CAL, assert_user_error, run

from optimum_blockprune import BlockPruneConfig, validate_request
from optimum_blockprune.errors import SettingError

LATE_CASES = {  # the cases of the issue that used to be refused only after loading or analysing
    "solver": (["--remove", "1", "--solver", "bogus"], "--solver 'bogus'"),
    "kinds-vs-granularity": (["--remove", "attn=2"], "use --granularity sublayer"),
    "method-granularity": (
        ["--remove", "1", "--method", "angular", "--granularity", "sublayer"],
        "--granularity layer",
    ),
    "protect-typo": (["--remove", "1", "--protect", "layer.3"], "did you mean layers.3"),
    "missing-calibration": (["--remove", "1", "--calibration", "missing.txt"], "--calibration missing.txt"),
    "too-many": (["--remove", "999"], "the model has 6 blocks"),
}

MORE_CASES = {
    "protect-out-of-range": (
        ["--remove", "1", "--protect", "layers.99"],
        "--protect: layers.99 is out of range",
    ),
    "force-typo": (["--remove", "1", "--force", "layers.3.ffn"], "--force"),
    "kind-absent": (
        ["--remove", "moe=1", "--granularity", "sublayer"],
        "--remove moe=1: this model has no moe",
    ),
    "top-k": (["--remove", "1", "--top-k", "0"], "--top-k must be"),
    "demo-typo": (["--remove", "1", "--calibration", "Demo"], "did you mean --calibration demo"),
    "adapter": (["--remove", "1", "--adapter", "nope"], "unknown --adapter 'nope'"),
}


@pytest.fixture
def config_only(tmp_path):
    """A model folder with config.json and no weight files."""
    path = tmp_path / "config-only"
    tiny_config("llama", 6).save_pretrained(path)
    return path


def _refused(tmp_path, config_only, args: list[str], fragment: str, command: str = "prune") -> float:
    out = tmp_path / "out"
    before = sorted(p.name for p in config_only.iterdir())
    t0 = time.perf_counter()
    proc = run(command, "--model", str(config_only), "--output", str(out), *CAL, *args, cwd=tmp_path)
    seconds = time.perf_counter() - t0
    assert_user_error(proc, fragment)
    assert not out.exists() and sorted(p.name for p in config_only.iterdir()) == before
    print(f"{command} {' '.join(args)}: refused in {seconds:.2f} s")
    return seconds


@pytest.mark.parametrize("case", sorted(LATE_CASES))
def test_late_cases_are_refused_before_weights_load(tmp_path, config_only, case):
    _refused(tmp_path, config_only, *LATE_CASES[case])


@pytest.mark.parametrize("case", sorted(MORE_CASES))
def test_more_bad_flags_are_refused_before_weights_load(tmp_path, config_only, case):
    _refused(tmp_path, config_only, *MORE_CASES[case])


def test_non_empty_output_is_refused_before_weights_load(tmp_path, config_only):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("precious")
    t0 = time.perf_counter()
    proc = run("prune", "--model", str(config_only), "--output", str(busy), "--remove", "1", *CAL)
    print(f"prune --output busy: refused in {time.perf_counter() - t0:.2f} s")
    assert_user_error(proc, "pass --overwrite")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]


def test_apply_checks_block_names_before_weights_load(tmp_path, config_only):
    _refused(
        tmp_path, config_only, ["--blocks", "layer.3"], "--blocks: 'layer.3' is not a block name", "apply"
    )
    _refused(tmp_path, config_only, ["--blocks", "layers.9"], "out of range", "apply")


def test_model_must_be_named_and_exist(tmp_path):
    assert_user_error(run("prune", "--remove", "1", "--output", str(tmp_path / "o")), "--model demo")
    missing = str(tmp_path / "nowhere")
    assert_user_error(run("prune", "-m", missing, "--remove", "1", "-o", str(tmp_path / "o")), "not found")
    assert not (tmp_path / "o").exists()


def test_python_users_get_the_same_checks(config_only, tmp_path):
    with pytest.raises(SettingError, match="protect: 'layer.3' is not a block name; did you mean layers.3"):
        validate_request(BlockPruneConfig(remove=1, protect=["layer.3"]), config_only)
    with pytest.raises(SettingError, match="remove 999: the model has 6 blocks"):
        validate_request(BlockPruneConfig(remove=999), config_only)
    plan = validate_request(
        BlockPruneConfig(remove=2, granularity="sublayer"), config_only, output=tmp_path / "o"
    )
    assert plan.adapter.name == "llama" and len(plan.blocks) == 12
    assert not (tmp_path / "o").exists()


def test_one_surface_for_every_subcommand(tmp_path, tiny_model_dir):
    assert run("--version").stdout.startswith("optimum-blockprune ")
    for command in ("analyze", "prune", "apply", "eval", "heal", "report"):
        text = run(command, "--help").stdout
        assert "--model" in text and "-m" in text, command
    for command in ("analyze", "prune", "apply", "heal"):
        assert "--output" in run(command, "--help").stdout, command
    assert (
        "--text-column" not in run("eval", "--help").stdout and "--text-field" in run("eval", "--help").stdout
    )
    assert "--input" not in run("report", "--help").stdout
    assert_user_error(run("report", "--input", str(tiny_model_dir)), "not a pruned model folder")  # old name
    assert_user_error(run("eval", "--model", str(tmp_path / "nope")), "--model")


def test_heal_checks_its_request_before_loading(tmp_path, config_only):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("precious")
    assert_user_error(run("heal", "-m", str(config_only), "-o", str(busy)), "pass --overwrite")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    out = tmp_path / "healed"
    proc = run("heal", "-m", str(config_only), "--data", "missing.txt", "-o", str(out), cwd=tmp_path)
    assert_user_error(proc, "--data missing.txt")
    assert_user_error(run("heal", "-o", str(out)), "--model")
    assert not out.exists()
