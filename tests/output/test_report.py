"""The visual report and the model card, built from a real prune of a tiny model."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model
from helpers import assert_user_error, run

from optimum_blockprune import BlockPruneError
from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.energy.model import EnergyModel
from optimum_blockprune.output.report.build import build_report
from optimum_blockprune.pruner import BlockPruner

PLOTS = ("coupling", "fields", "spectrum", "removal_map", "loss_vs_energy", "perplexity", "trajectory")
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)


def _prune(folder: Path, text: Path, tokenizer, write_report: bool = True, **kw):
    config = BlockPruneConfig(calibration=str(text), num_samples=4, seq_len=16, batch_size=2, top_k=5, **kw)
    pruner = BlockPruner.from_pretrained(tiny_model("llama", 6), tokenizer=tokenizer)
    return pruner.prune(config, folder, write_report=write_report)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, tokenizer, corpus):
    """A tiny Llama with 3 of 6 layers removed by the default (re-centring, 2 rounds) energy."""
    root = tmp_path_factory.mktemp("report")
    text = root / "cal.txt"
    text.write_text("\n\n".join(corpus))
    result = _prune(root / "pruned", text, tokenizer, remove=3)
    return result


def _image_size(png: bytes) -> tuple[int, int]:
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(png)) as image:
        image.load()  # decodes the whole file
        return image.size


def test_prune_saves_energies_that_reproduce_the_reported_candidates(pruned):
    report = pruned.report
    assert report["energy_files"] == ["blockprune_energy.safetensors", "blockprune_energy.round2.safetensors"]
    energies = [EnergyModel.load(pruned.path / f) for f in report["energy_files"]]
    assert energies[0].block_names == [f"layers.{i}" for i in range(6)]
    for energy, rnd in zip(energies, report["rounds"], strict=True):
        for cand in rnd["candidates"]:
            assert energy.energy(cand["removed"]) == pytest.approx(cand["energy"], rel=1e-9, abs=1e-12)
    # the folder still loads with stock transformers and with load_pruned
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from optimum_blockprune import load_pruned

    assert AutoModelForCausalLM.from_pretrained(pruned.path).config.num_hidden_layers == 3
    assert load_pruned(pruned.path).config.num_hidden_layers == 3
    assert AutoTokenizer.from_pretrained(pruned.path)("a fox").input_ids


def test_markdown_summary_references_existing_non_empty_pngs(pruned):
    text = (pruned.path / "report.md").read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert refs == [f"report_files/{key}.png" for key in PLOTS]
    for ref in refs:
        width, height = _image_size((pruned.path / ref).read_bytes())
        assert width > 100 and height > 100
    assert sorted(p.name for p in (pruned.path / "report_files").iterdir()) == sorted(
        f"{k}.png" for k in PLOTS
    )
    for block in pruned.removed:
        assert block in text


def test_html_is_self_contained(pruned):
    page = (pruned.path / "report.html").read_text()
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
    images = re.findall(r'<img class="plot" id="plot-(\w+)"[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert [key for key, _ in images] == list(PLOTS)
    import base64

    for _, data in images:
        width, height = _image_size(base64.b64decode(data))
        assert width > 100 and height > 100


_PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || (e.target && e.target.src || '').slice(0, 40))), true);
window.addEventListener('load', () => {
  const sizes = Array.from(document.images).map(i => [i.id, i.complete, i.naturalWidth, i.naturalHeight,
                                                      i.getBoundingClientRect().width]);
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify({sizes: sizes, errors: window.__errors});
  document.body.appendChild(pre);
});
</script>"""


def _chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"]
    cmd += ["--enable-logging=stderr", "--v=0", f"--user-data-dir={cwd / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (CI installs Debian's chromium)")
def test_report_renders_in_headless_chromium_with_every_plot(pruned, tmp_path):
    page = (pruned.path / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE + "\n</body>"))
    proc = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stdout[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["errors"] == []
    assert [s[0] for s in result["sizes"]] == [f"plot-{k}" for k in PLOTS]
    for _, complete, width, height, shown in result["sizes"]:
        assert complete and width > 100 and height > 100 and shown > 100
    assert _console_errors(proc.stderr) == []
    # the unmodified page, rendered to a screenshot: loads without console output, not blank
    shot = tmp_path / "shot.png"
    proc = _chromium(
        f"--screenshot={shot}",
        "--window-size=1280,4000",
        (pruned.path / "report.html").as_uri(),
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and _console_errors(proc.stderr) == [], proc.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (4000, 1280) and pixels.std() > 10


def test_model_card_names_removed_blocks_and_loads(pruned):
    from huggingface_hub import ModelCard

    card = ModelCard.load(pruned.path / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "transformers" and "optimum-blockprune" in meta["tags"]
    assert "base_model" not in meta  # a local folder has no hub id
    for block in pruned.removed:
        assert f"`{block}`" in card.text
    assert "recentred" in card.text and "report.html" in card.text
    params = EnergyModel.load(pruned.path / "blockprune_energy.safetensors").num_params[0]
    assert f"{int(params):,}" in card.text


def test_base_model_is_a_hub_id_only():
    from optimum_blockprune.data.demo_assets import DEMO_MODEL, cache_dir
    from optimum_blockprune.output.modelcard import DEMO_HUB_ID, base_model_id

    assert base_model_id("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert base_model_id("./my-model") is None and base_model_id("") is None
    if (cache_dir() / DEMO_MODEL).exists():
        assert base_model_id(str(cache_dir() / DEMO_MODEL)) == DEMO_HUB_ID


def test_sublayer_fisher_prune_and_no_report_flag(tmp_path, tokenizer, corpus):
    text = tmp_path / "cal.txt"
    text.write_text("\n\n".join(corpus))
    result = _prune(tmp_path / "a", text, tokenizer, remove=3, granularity="sublayer", energy="fisher")
    files = build_report(result.path, tmp_path / "again")  # rebuilt elsewhere from the folder alone
    assert len(files.images) == len(PLOTS) and all(p.stat().st_size > 1000 for p in files.images)
    assert all(block.count(".") == 2 and block in files.markdown.read_text() for block in result.removed)
    quiet = _prune(tmp_path / "b", text, tokenizer, remove=2, energy="additive", write_report=False)
    assert (quiet.path / "README.md").is_file() and (quiet.path / "blockprune_energy.safetensors").is_file()
    assert not (quiet.path / "report.html").exists() and not (quiet.path / "report_files").exists()


def test_report_cli_with_methods_and_one_line_error(pruned, tmp_path, tiny_model_dir):
    methods = tmp_path / "methods.json"
    rows = [
        {"method": m, "granularity": "layer", "removed": k, "perplexity": p * (1 + k)}
        for m, p in (("blockprune", 10.0), ("shortgpt", 12.0), ("random", 20.0))
        for k in (1, 2, 3)
    ]
    methods.write_text(json.dumps(rows))
    out = tmp_path / "out"
    proc = run("report", "--input", str(pruned.path), "--output", str(out), "--methods", str(methods))
    assert proc.returncode == 0, proc.stderr
    assert "report written to" in proc.stdout
    own = (pruned.path / "report_files" / "perplexity.png").read_bytes()
    assert (out / "report_files" / "perplexity.png").read_bytes() != own
    assert (out / "report_files" / "coupling.png").read_bytes() == (
        pruned.path / "report_files" / "coupling.png"
    ).read_bytes()
    assert_user_error(run("report", "--input", str(tiny_model_dir)), "not a pruned model folder")
    assert not (tiny_model_dir / "report.html").exists()


def test_bad_inputs_give_one_line_errors_and_write_nothing(pruned, tmp_path):
    def fails(fragment: str, *args, **kw) -> None:
        with pytest.raises(BlockPruneError, match=fragment) as info:
            build_report(*args, **kw)
        assert "\n" not in str(info.value)

    fails("is not a folder", tmp_path / "nowhere")
    methods = tmp_path / "methods.json"
    for text, fragment in (
        ('[{"method": "x"}]', "needs the keys"),
        ("[]", "holds no rows"),
        ('[{"method": "x", "removed": 2, "perplexity": -1}]', "positive number"),
        ("{oops", "cannot read"),
    ):
        methods.write_text(text)
        fails(fragment, pruned.path, tmp_path / "bad", methods)
        assert not (tmp_path / "bad").exists()
    fails("file not found", pruned.path, tmp_path / "bad", tmp_path / "missing.json")
    # a copy without its energy model (e.g. a healed folder) names the missing file, writes nothing
    copy = tmp_path / "copy"
    shutil.copytree(pruned.path, copy, ignore=shutil.ignore_patterns("report*", "*.safetensors"))
    fails("lacks blockprune_energy.safetensors", copy)
    assert [p.name for p in copy.iterdir() if p.name.startswith((".", "report"))] == []
    (tmp_path / "file").write_text("x")
    fails("is a file", pruned.path, tmp_path / "file")


def test_load_run_rejects_reports_without_rounds(tmp_path):
    from optimum_blockprune.output.layout import load_run

    (tmp_path / "blockprune_config.json").write_text("{}")
    (tmp_path / "blockprune_report.json").write_text('{"removed": ["layers.1"]}')
    with pytest.raises(BlockPruneError, match="no selection rounds"):
        load_run(tmp_path)
    (tmp_path / "blockprune_report.json").write_text("{not json")
    with pytest.raises(BlockPruneError, match="cannot read"):
        load_run(tmp_path)


def test_model_card_of_a_folder_without_selection_rounds(tmp_path):
    """Folders written by save_pruned without a selection (e.g. the healing benchmark) get a card too."""
    from optimum_blockprune.output.modelcard import card_metadata, write_model_card

    (tmp_path / "blockprune_config.json").write_text(
        '{"remove": 2, "removed_blocks": ["layers.1", "layers.3"]}'
    )
    report = {"model_id": "org/base", "removed": ["layers.1", "layers.3"], "num_blocks": 6}
    (tmp_path / "blockprune_report.json").write_text(json.dumps(report))
    card = write_model_card(tmp_path)
    assert card_metadata(card)["base_model"] == "org/base"
    assert "`layers.3`" in card.read_text() and "report.html" not in card.read_text()
