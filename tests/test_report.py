"""The HTML report: self-contained, written by ``ppl-vae run`` / ``ppl-vae report``, and
rendered for real by headless Chromium (skipped, with the reason, when no browser exists)."""

import html
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from _diagnostics_cases import GlobalGuide, global_data, global_model

from ppl_vae.cli import main
from ppl_vae.reporting.page import report
from ppl_vae.runs.diagnose import diagnose_run, read_tree

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def _browser():
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def _chromium(args, tmp_path, timeout=120):
    cmd = [_browser(), "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _images(page: str) -> list[str]:
    return re.findall(r"<img [^>]*src=\"([^\"]+)\"", page)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """The main job with tiny settings: train, evaluate, diagnose, report."""
    out = tmp_path_factory.mktemp("run") / "digits"
    code = main(["run", "--data", "digits", "--epochs", "2", "--latent-dim", "2", "--hidden", "16",
                 "--batch-size", "256", "--no-progress", "--out", str(out)])
    assert code == 0
    return out


def test_main_job_writes_a_self_contained_report(digits_run, capsys):
    page = (digits_run / "report.html").read_text()
    srcs = _images(page)
    assert len(srcs) >= 7  # curves, k-hat, KL, images, latent map, ArviZ, gaps, SBC
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in page and "https://" not in page  # readable offline
    for section in ("Verdicts", "estimator plan", "Training", "Evaluation", "Pareto k-hat",
                    "Data, reconstructions and prior samples", "Latent space", "ArviZ",
                    "Simulation-based calibration", "Inference gaps"):
        assert section in page
    assert re.search(r"class='status' style='color:#[0-9a-f]+'>(ok|warning|failing)<", page)
    # The page shows this run's numbers: its evaluation and its settings.
    ev = pd.read_csv(digits_run / "evaluation.csv", index_col=0).iloc[:, 0]
    for key in ("elbo", "iwae", "kl", "recon"):
        assert f"<td>{ev[key]:.4g}</td>" in page, key
    assert "<td>analytic</td>" in page
    checks = pd.read_csv(digits_run / "diagnostics_checks.csv")
    for check in checks["check"]:
        assert html.escape(check) in page, check
    # Complete settings: what ran, how training ended, which epoch's parameters are reported.
    for setting, value in (("model", "vae"), ("guide", "mlp"), ("data", "digits"),
                           ("split", "test (360 rows; trained on 1,437)"),
                           ("latent size", "z: 2 (local, per data point)"),
                           ("epochs run", "2 of at most 2"),
                           ("stopped by", "the fixed number of epochs (2)"),
                           ("kept epoch", "2: the last one")):
        assert f"<td>{setting}</td>\n      <td>{html.escape(value)}</td>" in page, setting
    # Every table sits in a box of the page's width; the columns of the per-point tables and
    # the SBC table are explained under them.
    assert page.count("<table") == page.count("<div class='scroll'><table") + 1  # + verdicts
    for column in ("k_hat", "ess", "log_px", "elbo_gap", "z_ms", "calibrated", "problem"):
        assert f"<b>{column}</b>: " in page, column


def test_diagnose_files_read_back_identically(digits_run, capsys, tmp_path):
    _, result = diagnose_run(digits_run, num_draws=30, gaps=False, calibrate=False)
    import xarray as xr

    xr.testing.assert_identical(read_tree(digits_run / "diagnostics.nc"), result.tree)
    import pandas as pd

    table = pd.read_csv(digits_run / "diagnostics.csv")
    assert len(table) == 360 and {"k_hat", "log_px", "elbo_gap"} <= set(table.columns)
    assert main(["report", str(digits_run), "--num-draws", "30", "--no-gaps", "--no-sbc",
                 "--out", str(tmp_path / "again.html")]) == 0
    assert (tmp_path / "again.html").stat().st_size > 10_000
    assert f"report: {(tmp_path / 'again.html').resolve()}" in capsys.readouterr().out
    assert "Verdicts" in (tmp_path / "again.html").read_text()
    assert main(["diagnose", str(digits_run), "--num-draws", "30", "--no-gaps", "--no-sbc"]) == 0
    printed = capsys.readouterr().out
    checks = pd.read_csv(digits_run / "diagnostics_checks.csv")
    assert len(checks) >= 4
    for check, status in zip(checks["check"], checks["status"], strict=True):
        assert any(check in line and status in line for line in printed.splitlines()), check
    assert f"wrote {digits_run / 'diagnostics.nc'}" in printed


def test_report_of_a_custom_global_model_with_two_runs(tmp_path):
    x = global_data(n=30)
    runs = [(global_model, GlobalGuide(loc=1.4).double()),
            (global_model, GlobalGuide(loc=1.6).double())]
    path = report(data=x, runs=runs, out=tmp_path / "global.html", num_draws=40,
                  gaps=False, calibrate=False, title="custom model")
    page = path.read_text()
    assert "posterior of every global latent dimension" in page  # arviz-plots plot_dist of mu
    assert "no history given" in page and "<td>epochs run</td>" not in page  # not "0 epochs"
    assert "R-hat across runs" in page
    assert all(s.startswith("data:image/png;base64,") for s in _images(page))


@pytest.mark.skipif(_browser() is None,
                    reason="no headless browser (install Debian's `chromium`; .ci/run does)")
def test_chromium_renders_every_image(digits_run, tmp_path):
    page = (digits_run / "report.html").read_text()
    # A copy that writes every image's decoded width into the DOM once the page has loaded.
    probe = ("<script>window.addEventListener('load',()=>{const w=[...document.images]"
             ".map(i=>i.complete?i.naturalWidth:0);document.body.setAttribute("
             "'data-widths',w.join(','));const edge=document.body.getBoundingClientRect()"
             ".right;const over=[...document.querySelectorAll('table')].filter(t=>"
             "t.getBoundingClientRect().right>edge+1).length;document.body.setAttribute("
             "'data-overflow',String(over));});</script>")
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", probe + "</body>"))
    dom = _chromium(["--virtual-time-budget=10000", "--window-size=1400,3000", "--dump-dom",
                     probed.as_uri()], tmp_path)
    widths = re.search(r'data-widths="([0-9,]*)"', dom.stdout)
    assert widths, dom.stderr[-2000:]
    widths = [int(w) for w in widths.group(1).split(",")]
    assert len(widths) == len(_images(page)) and min(widths) > 0
    # At 1400 px every table ends inside the page's column (none runs off to the right).
    overflow = re.search(r'data-overflow="([0-9]*)"', dom.stdout)
    assert overflow and int(overflow.group(1)) == 0, dom.stdout[-500:]

    shot = tmp_path / "shot.png"
    run = _chromium([f"--screenshot={shot}", "--window-size=1200,3000",
                     (digits_run / "report.html").as_uri()], tmp_path)
    assert shot.exists(), run.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (3000, 1200)
    # Not blank: the rendered page has text, coloured verdicts and plotted figures.
    assert pixels.std() > 0.05
    rgb = (pixels.reshape(-1, 3) * 255).astype(np.int64)
    assert len(np.unique(rgb[:, 0] * 65536 + rgb[:, 1] * 256 + rgb[:, 2])) > 200



def test_report_reuses_current_files_and_recomputes_stale_ones(digits_run, monkeypatch, capsys,
                                                              tmp_path):
    import json

    import h5py

    import ppl_vae.runs.diagnose as run_module
    from ppl_vae.runs.diagnose import checkpoint_digest

    assert main(["diagnose", str(digits_run), "--num-draws", "30", "--no-gaps", "--no-sbc",
                 "--points", "12"]) == 0
    assert "seconds per phase: draws" in capsys.readouterr().out
    meta = json.loads((digits_run / "diagnostics.json").read_text())
    digest = checkpoint_digest(digits_run)
    assert meta["checkpoint_sha256"] == digest
    tree = read_tree(digits_run / "diagnostics.nc")
    assert tree.attrs["checkpoint_sha256"] == digest
    assert tree.attrs["num_points"] == 360 and tree["posterior"].sizes["data"] >= 12
    with h5py.File(digits_run / "diagnostics.nc") as f:  # compressed, float32 as the data
        assert f["posterior_predictive/x_mean"].compression == "gzip"
        assert f["posterior_predictive/x_mean"].dtype == np.float32

    def no_diagnose(*args, **kwargs):
        raise AssertionError("the diagnostics were current: nothing should be recomputed")

    monkeypatch.setattr(run_module, "diagnose", no_diagnose)
    # Same options as the files: read back; the gaps the files lack are the only new work.
    assert main(["report", str(digits_run), "--num-draws", "30", "--no-sbc", "--points", "12",
                 "--out", str(tmp_path / "reused.html")]) == 0
    assert "Inference gaps" in (tmp_path / "reused.html").read_text()
    assert (digits_run / "diagnostics_gaps.csv").exists()
    capsys.readouterr()
    # Other options (or another checkpoint) make the files stale: diagnose runs again (here it
    # raises, which the CLI reports as a one-line error).
    assert main(["report", str(digits_run), "--num-draws", "31", "--no-gaps", "--no-sbc"]) != 0
    assert "nothing should be recomputed" in capsys.readouterr().err
    meta = json.loads((digits_run / "diagnostics.json").read_text())
    from ppl_vae.storage.files import write_bytes

    write_bytes(digits_run / "diagnostics.json",
                json.dumps({**meta, "checkpoint_sha256": "0"}).encode())
    assert main(["report", str(digits_run), "--num-draws", "30", "--no-gaps", "--no-sbc",
                 "--points", "12"]) != 0
    assert "nothing should be recomputed" in capsys.readouterr().err
