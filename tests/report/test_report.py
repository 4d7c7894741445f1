"""`capidsl report`: a PNG with the curves actually drawn, and a summary, from what a run leaves on disk."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from capidsl.report import ReportError, describe, plot, read_run

ROOT = Path(__file__).resolve().parents[2]
C0 = np.array([0x1F, 0x77, 0xB4]) / 255  # matplotlib's first line colour
C1 = np.array([0xFF, 0x7F, 0x0E]) / 255  # its second (the validation curve)


def _write_run(run_dir: Path, stopped_early: bool = True) -> None:
    run_dir.mkdir()
    lines = []
    for step in range(10, 210, 10):
        lines.append({"step": step, "epoch": step / 100, "loss": 5.0 / (1 + step / 50), "lr": 1e-3 * min(1, step / 50),
                      "grad_norm": 1.0 + step / 100, "tokens_per_s": 1000.0 + step, "step_time_s": 0.1,
                      "data_wait_s": 0.0, "device_peak_bytes": None, "host_peak_rss_bytes": 1})
        if step % 50 == 0:
            lines.append({"step": step, "epoch": step / 100, "val_loss": 5.5 / (1 + step / 60), "val_perplexity": 1.0,
                          "eval_time_s": 0.1})
    lines.append({"step": 210, "loss": "nan", "lr": 1e-3, "grad_norm": "inf", "tokens_per_s": 1.0})
    text = "".join(json.dumps(x) + "\n" for x in lines) + '{"step": 22'  # the last line cut by a kill
    (run_dir / "metrics.jsonl").write_text(text)
    for step in (100, 200):
        (run_dir / "checkpoints" / str(step)).mkdir(parents=True)
    summary = {"plan_name": "toy", "steps": 210, "tokens": 210 * 64, "resumable": not stopped_early,
               "stop_reason": "stopped at step 210: not finite(loss)" if stopped_early else "completed",
               "best": {"metric": "val_loss", "value": 1.2, "step": 200}}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def _pixels_near(image: np.ndarray, colour: np.ndarray) -> int:
    return int((np.abs(image[..., :3] - colour).max(axis=-1) < 0.08).sum())


def _red_pixels(image: np.ndarray) -> int:
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return int(((r > 0.8) & (g < 0.3) & (b < 0.3)).sum())


def test_png_has_the_curves_and_the_summary_says_how_it_ended(tmp_path):
    _write_run(tmp_path / "run")
    record = read_run(tmp_path / "run")
    assert len(record.train) == 21 and len(record.evals) == 4 and record.skipped_lines == 1
    assert record.checkpoint_steps == [100, 200]
    out = plot(record, tmp_path / "r.png")
    import matplotlib.image

    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (700, 1100)
    assert _pixels_near(image, C0) > 500  # four panels of training curves
    assert _pixels_near(image, C1) > 50  # the validation curve
    assert _red_pixels(image) > 100  # the early-stop line
    text = describe(record)
    assert "not finite(loss)" in text and "best val_loss 1.2000 at step 200" in text and "1 unreadable line" in text


def test_no_stop_line_for_a_completed_run(tmp_path):
    _write_run(tmp_path / "run", stopped_early=False)
    import matplotlib.image

    image = matplotlib.image.imread(plot(read_run(tmp_path / "run"), tmp_path / "r.png"))
    assert _red_pixels(image) == 0


def test_not_a_run_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="no metrics.jsonl"):
        read_run(tmp_path)
    out = subprocess.run([sys.executable, "-m", "capidsl", "report", str(tmp_path / "nope")], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 1 and "is not a folder" in out.stderr and "Traceback" not in out.stderr


def test_the_command_writes_report_png_in_the_run_dir(tmp_path):
    _write_run(tmp_path / "run")
    out = subprocess.run([sys.executable, "-m", "capidsl", "report", str(tmp_path / "run")], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    png = tmp_path / "run" / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {png}" in out.stdout


def _unlogged_run(run_dir: Path, metrics: str | None, summary: dict | None = None, checkpoints=()) -> Path:
    """A run directory as a run leaves it before its first log line: plan.json, maybe checkpoints and a summary."""
    run_dir.mkdir()
    (run_dir / "plan.json").write_text(json.dumps({"name": "toy", "cadence": {"log_every": 25, "total_steps": 100}}))
    if metrics is not None:
        (run_dir / "metrics.jsonl").write_text(metrics)
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    for step in checkpoints:
        (run_dir / "checkpoints" / str(step)).mkdir(parents=True)
    return run_dir


def test_a_run_killed_before_its_first_log_line_is_named_a_run_that_has_not_logged(tmp_path):
    run = _unlogged_run(tmp_path / "killed", metrics=None, checkpoints=(10, 20))
    with pytest.raises(ReportError) as info:
        read_run(run)
    text = info.value.render()
    assert f"{run} is a run (plan.json) that has not logged yet: it logs every 25 steps; its last checkpoint is step 20" in text
    assert "no metrics.jsonl" not in text and "resumes it" in text
    # a line cut short by the kill is no log line either
    cut = _unlogged_run(tmp_path / "cut", metrics='{"step": 2')
    with pytest.raises(ReportError, match="has not logged yet: it logs every 25 steps"):
        read_run(cut)


def test_a_finished_run_shorter_than_its_log_cadence_says_so(tmp_path):
    run = _unlogged_run(tmp_path / "short", metrics="", summary={"steps": 5, "resumable": False, "stop_reason": "completed"})
    with pytest.raises(ReportError) as info:
        read_run(run)
    text = info.value.render()
    assert "has not logged yet: it logs every 25 steps, and it ended at step 5" in text
    assert "it is finished: log more often (logging.every)" in text
    out = subprocess.run([sys.executable, "-m", "capidsl", "report", str(run)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and "has not logged yet: it logs every 25 steps" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (run / "report.png").exists()
