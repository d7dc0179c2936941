"""report.html (one run) and `saec report` (several runs): self-contained pages, checked in headless chromium;
per-step CSV and TensorBoard logs."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

import saec
from saec.cli import app
from saec.analysis.reportpage import line_chart
from saec.run.report import render_comparison, render_run_report
from saec.run import artifacts as A
from saec.errors import UserError
from tests.conftest import SPECS

TINY = {"data.dataset": "mnist5k", "encoding.timesteps": 2, "training.epochs": 2, "training.max_steps": 2,
        "training.batch_size": 8, "data.train_limit": 32, "data.validation.limit": 16}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless browser missing: apt-get install -y chromium")

# Appended to a copy of the page under test (the page itself has no script): after load, it writes how
# many images decoded (naturalWidth > 0) into the DOM, which --dump-dom then prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const box = document.createElement("pre"); box.id = "saec-probe";
  box.textContent = JSON.stringify({images: imgs.length,
    loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    svgs: document.querySelectorAll("svg").length, text: document.body.innerText.length});
  document.body.appendChild(box);
});
</script>"""


def open_in_chromium(page: Path, tmp_path: Path) -> tuple[dict, list[str]]:
    """Load ``page`` (with the probe) in headless chromium: (probe result, console messages)."""
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
                             "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
                            capture_output=True, text=True, timeout=120)
    probe = re.search(r'<pre id="saec-probe">([^<]*)</pre>', result.stdout)
    assert probe is not None, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(probe.group(1).replace("&quot;", '"')), console


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[saec.Run]:
    root = tmp_path_factory.mktemp("report")
    compiled = saec.compile(SPECS / "sae_dense.yaml", TINY)
    first = saec.train(compiled, root / "a", device="cpu", log=lambda line: None)
    other = saec.compile(SPECS / "sae_dense.yaml", {**TINY, "training.lr": 1e-3})
    second = saec.train(other, root / "b", device="cpu", log=lambda line: None)
    return [first, second]


def test_every_run_writes_a_self_contained_report(two_runs):
    run = two_runs[0]
    page = (run.path / "report.html").read_text()
    # nothing fetched: no external URL, no script, no link to another file
    assert not re.search(r'(src|href)="(?!data:)', page) and "<script" not in page and "http" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    for heading in ("Curves", "Figures", "Validation metrics", "Hardware statistics", "Export and agreement checks",
                    "Network (IR)", "Resolved spec"):
        assert f"<h2>{heading}</h2>" in page
    assert page.count("data:image/png;base64,") == len(list((run.path / "figures").glob("*.png"))) == 5
    assert "2,586,400" in page  # the IR table's total
    assert "preset: saec" in page  # the resolved spec
    assert f"{run.metrics['rec_loss']:.3f}" in page
    assert page.count("<svg") == 3  # loss and activity per epoch, loss per step


def test_report_shows_stats_and_export_checks_once_written(two_runs, tmp_path):
    run = two_runs[0]
    A.write_json(run.path / A.STATS, {"layers": {"latent": {"neurons": 100, "synops_per_example": 1234.0}},
                                      "total": {"synops_per_example": 98765.0}})
    (run.path / "export").mkdir(exist_ok=True)
    A.write_json(run.path / "export" / "agreement.json", {"onnxruntime": {"spike_count_mismatches": 0}})
    page = render_run_report(run.path)
    assert "98,765" in page and "onnxruntime.spike_count_mismatches" in page
    (run.path / A.STATS).unlink()
    (run.path / "export" / "agreement.json").unlink()


def test_steps_csv_has_one_row_per_step(two_runs):
    rows = list(csv.DictReader((two_runs[0].path / "steps.csv").open()))
    assert [(int(r["epoch"]), int(r["step"]), int(r["global_step"])) for r in rows] == [(1, 1, 1), (1, 2, 2),
                                                                                        (2, 1, 3), (2, 2, 4)]
    assert {"loss", "rec", "p2", "a1", "spike_rate", "lr", "seconds"} <= set(rows[0])
    assert all(float(r["loss"]) > 0 for r in rows)


def test_saec_report_compares_runs(two_runs, tmp_path):
    out = tmp_path / "compare.html"
    result = CliRunner().invoke(app, ["report", str(two_runs[0].path), str(two_runs[1].path), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    page = out.read_text()
    assert "2 runs compared" in page and "training.lr" in page and page.count("<svg") == 3
    assert str(two_runs[1].path) in page


def test_report_of_a_folder_that_is_no_run_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {tmp_path}: not a saec run folder (no spec.yaml)"
    with pytest.raises(UserError, match="no such run folder"):
        render_comparison([tmp_path / "absent", tmp_path])


def test_line_chart_skips_missing_points_and_says_when_empty():
    svg = line_chart([("a", [1, 2, 3], [1.0, None, float("nan")])], title="t", x_label="epoch")
    assert svg.count("<circle") == 1
    assert "no data yet" in line_chart([("a", [], [])], title="t", x_label="epoch")


@needs_chromium
def test_the_pages_render_in_a_real_browser(two_runs, tmp_path):
    out = tmp_path / "compare.html"
    CliRunner().invoke(app, ["report", *(str(r.path) for r in two_runs), "-o", str(out)])
    for page, images, svgs in ((two_runs[0].path / "report.html", 5, 3), (out, 2, 3)):
        probe, console = open_in_chromium(page, tmp_path)
        assert probe["images"] == images and probe["loaded"] == images, probe
        assert probe["svgs"] == svgs and probe["text"] > 500
        assert console == []


@needs_chromium
def test_the_browser_check_catches_a_broken_image_and_a_console_error(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<html><body><img src="data:image/png;base64,AAAA"><script>console.error("boom")</script>'
                    "</body></html>")
    probe, console = open_in_chromium(page, tmp_path)
    assert probe["images"] == 1 and probe["loaded"] == 0
    assert len(console) == 1 and "boom" in console[0]


def test_tensorboard_logger(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard")
    run = saec.train(saec.compile(SPECS / "sae_dense.yaml", {**TINY, "training.epochs": 1}), tmp_path / "tb",
                     device="cpu", logger="tensorboard", log=lambda line: None)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/rec", "train/lr", "val/rec_loss"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]


def test_unknown_logger_and_missing_tensorboard_are_one_line(tmp_path, monkeypatch):
    result = CliRunner().invoke(app, ["train", str(SPECS / "sae_dense.yaml"), "--logger", "wandb",
                                      "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--logger: unknown logger 'wandb'; use one of csv, tensorboard" in result.stderr
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    from saec.run.steplog import check_logger

    with pytest.raises(UserError, match="--logger: TensorBoard logging needs the tensorboard package: pip install"):
        check_logger("tensorboard")
    assert not (tmp_path / "x").exists()


def test_steps_csv_of_a_resumed_run_matches_an_uninterrupted_one(two_runs, tmp_path):
    from saec.run.steplog import StepLog, read_steps
    from saec.run.train import train
    from saec.training.train import TrainingInterrupted

    compiled = saec.compile(SPECS / "sae_dense.yaml", TINY)
    with pytest.raises(TrainingInterrupted):
        train(compiled.spec, compiled.graph, tmp_path / "r", device="cpu", log=lambda line: None, stop_after_steps=3)
    assert len(read_steps(tmp_path / "r" / "steps.csv")) == 3
    train(compiled.spec, compiled.graph, tmp_path / "r", device="cpu", resume=True, log=lambda line: None)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_steps(tmp_path / "r" / "steps.csv")) == strip(read_steps(two_runs[0].path / "steps.csv"))
    # rows written after the checkpoint a resume starts from (a crash) are dropped
    log = StepLog(tmp_path / "r", resume_from=2)
    log.close()
    assert [r["global_step"] for r in read_steps(tmp_path / "r" / "steps.csv")] == [1.0, 2.0]
