"""Notebook display: short reprs and ``_repr_html_`` (diagnostics/display.py,
reporting/display.py, ``Evaluation``, ``Dataset``), and when ``fit`` shows progress."""

import sys
import types

import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import ppl_vae
from ppl_vae.data.datasets import Dataset
from ppl_vae.diagnostics.summary import Diagnostics
from ppl_vae.evaluation.metrics import Evaluation
from ppl_vae.reporting.display import ReportPath
from ppl_vae.train.loop import show_progress


def test_diagnostics_repr_is_one_short_line_and_html_is_the_verdicts():
    checks = pd.DataFrame({"check": ["k-hat", "active units"], "value": ["0.9", "1 of 8"],
                           "status": ["failing", "ok"], "why": ["tail", ""],
                           "advice": ["a richer guide", ""]})
    diag = Diagnostics(tree=None, pointwise=pd.DataFrame({"k_hat": [0.2, 0.9] * 5000}),
                       latent=pd.DataFrame({"active": [True] + [False] * 7}),
                       mutual_information=0.1, posterior=pd.DataFrame(), checks=checks,
                       num_points=10000)
    text = repr(diag)
    assert text == ("Diagnostics(points=10000, checks: 1 ok, 1 failing; max k-hat 0.9, "
                    "active units 1/8)")
    page = diag._repr_html_()
    assert "a richer guide" in page and "<table" in page


def test_evaluation_and_dataset_reprs(digits):
    ev = Evaluation(elbo=-30.12346, iwae=-29.5, kl=3.0, recon=-27.1, num_samples=100)
    assert repr(ev) == ("Evaluation(elbo=-30.1235, iwae=-29.5000, kl=3.0000, recon=-27.1000, "
                        "num_samples=100)")
    assert "<table" in ev._repr_html_()
    text = repr(digits)
    assert text == ("Dataset('digits', train (1437, 64), test (360, 64), torch.float32, "
                    "10 classes, images 8x8)")
    assert "Dataset(&#x27;digits&#x27;" in digits._repr_html_()
    plain = Dataset(torch.zeros(3, 2), torch.zeros(1, 2))
    assert repr(plain) == "Dataset('data', train (3, 2), test (1, 2), torch.float32)"


def test_report_path_is_a_path_that_shows_the_page(tmp_path):
    page = tmp_path / "r.html"
    page.write_text("<html><body><h1>Verdicts & more</h1></body></html>")
    path = ReportPath(page)
    assert path == page and str(path) == str(page) and path.read_text().startswith("<html>")
    shown = path._repr_html_()
    assert "<iframe srcdoc=" in shown and "Verdicts &amp; more" in shown
    assert str(page) in shown
    page.unlink()
    assert "gone" in path._repr_html_()


def test_progress_default_shows_in_a_notebook_kernel(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert show_progress(True) and not show_progress(False)
    fake = types.ModuleType("IPython")
    monkeypatch.setitem(sys.modules, "IPython", fake)
    fake.get_ipython = lambda: None
    assert not show_progress(None)  # a plain script whose stderr is a file
    fake.get_ipython = lambda: type("ZMQInteractiveShell", (), {})()
    assert show_progress(None)  # Jupyter's kernel


def test_fit_prints_one_summary_line_when_progress_shows(capsys):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    x = torch.randn(16)
    ppl_vae.fit(model, AutoNormal(model), x, epochs=2, batch_size=16, progress=True)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("ppl-vae fit:")]
    assert len(lines) == 1 and "epochs=2" in lines[0] and "stopped_by=epochs" in lines[0]
    ppl_vae.fit(model, AutoNormal(model), x, epochs=1, batch_size=16, progress=False)
    assert "ppl-vae fit:" not in capsys.readouterr().out


@pytest.mark.parametrize("obj", ["fit_result"])
def test_fit_result_repr_stays_short_with_many_parameters(obj):
    encoder = torch.nn.Linear(64, 400)
    result = ppl_vae.FitResult(model=lambda x: None, guide=encoder,
                               history=pd.DataFrame({"epoch": [1], "train_elbo": [-1.0],
                                                     "seconds": [1.0]}),
                               params={"guide": encoder.state_dict()}, settings={})
    assert len(repr(result)) < 300 and len(result._repr_html_()) < 2000
