"""Typed verdicts (``Verdict``, ``Status``), and checks that fail to compute recorded as
"not computed: <reason>" by ``diagnose`` and by ``diagnose_run`` completing a run folder."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
from _diagnostics_cases import SIGMA, make_guide, simulate, weights

import ppl_vae
from ppl_vae.diagnostics.verdicts import STATUSES, Status, Verdict, row, verdict_table
from ppl_vae.runs import diagnose_run

SBC = "Simulation-based calibration"


def copied_model(x):
    """The linear-Gaussian case observing a copy of its argument: SBC cannot tell which
    argument to replace with a simulation, so its step raises ``ValueError``."""
    w = weights(x.dtype)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(2), x.new_ones(2)).to_event(1))
        pyro.sample("x", dist.Normal(z @ w.T, SIGMA).to_event(1), obs=x + 0.0)


def test_a_verdict_round_trips_through_the_checks_table():
    verdicts = [Verdict("A", "1.0", Status.PASS, "fine", "ignored when ok"),
                Verdict("B", "2.0", Status.WARN, "hm", "look"),
                Verdict("C", "3.0", Status.FAIL, "bad", "fix"),
                Verdict.not_computed("D", ValueError("site 'x': no way\nsecond line"))]
    table = verdict_table(verdicts)
    # The table keeps its strings: a check not computed reads "warning", reason in "why".
    assert table["status"].tolist() == ["ok", "warning", "failing", "warning"]
    assert set(table["status"]) <= set(STATUSES)
    assert table["advice"].tolist() == ["", "look", "fix", ""]
    assert table["why"].iloc[3] == "not computed: site 'x': no way"
    back = [Verdict.from_row(r) for r in table.to_dict("records")]
    assert [v.status for v in back] == [Status.PASS, Status.WARN, Status.FAIL,
                                        Status.NOT_COMPUTED]
    assert back[1:] == verdicts[1:]
    # Read back from a CSV: empty cells come back as NaN, and read as empty strings.
    csv = pd.read_csv(pd.io.common.StringIO(table.to_csv(index=False)))
    assert [Verdict.from_row(r) for r in csv.to_dict("records")][0].advice == ""


def test_bad_statuses_are_errors_not_asserts():
    with pytest.raises(TypeError, match="must be a Status"):
        Verdict("A", "1", "ok", "why")
    with pytest.raises(ValueError, match="'fine'"):
        row("A", "1", "fine", "why")
    with pytest.raises(ValueError, match="'passed'"):
        Verdict.from_row({"check": "A", "value": "1", "status": "passed", "why": ""})
    with pytest.raises(dataclasses.FrozenInstanceError):
        Verdict("A", "1", Status.PASS, "why").status = Status.FAIL
    assert row("A", "1", Status.WARN, "why", "do")["status"] == "warning"
    assert Status.NOT_COMPUTED.severity == Status.WARN.severity < Status.FAIL.severity


def test_diagnose_records_a_check_that_raises(dtype):
    x = simulate(64, dtype=dtype)
    diag = ppl_vae.diagnose(copied_model, make_guide(), x, num_draws=30, gaps=False,
                            sbc_draws=19, progress=False)
    verdict = {v.check: v for v in diag.verdicts}[SBC]
    assert verdict.status is Status.NOT_COMPUTED
    assert verdict.why.startswith("not computed: site 'x': cannot tell which argument")
    assert "1 not computed" in repr(diag)
    with pytest.raises(dataclasses.FrozenInstanceError):
        diag.checks = pd.DataFrame()  # built once


class _Run:
    """What ``diagnose_run`` reads of a loaded run folder."""

    def __init__(self, x):
        self.model, self.guide, self.x = copied_model, make_guide(), x
        self.config, self.history = {"settings": {"seed": 0}}, None

    def data(self, split):
        return self.x


def test_completing_a_run_folder_records_a_check_that_raises(tmp_path):
    (tmp_path / "final.pt").write_bytes(b"trained parameters")
    run = _Run(simulate(48))
    _, first = diagnose_run(tmp_path, num_draws=30, gaps=False, calibrate=False, run=run)
    assert SBC not in set(first.checks["check"])
    # Read back and completed with SBC: its step raises, and the folder's table says so.
    _, again = diagnose_run(tmp_path, num_draws=30, gaps=False, calibrate=True, reuse=True,
                            run=run)
    assert again is not first and again.sbc is None
    verdict = {v.check: v for v in again.verdicts}[SBC]
    assert verdict.status is Status.NOT_COMPUTED and "cannot tell which argument" in verdict.why
    written = pd.read_csv(tmp_path / "diagnostics_checks.csv").set_index("check")
    assert written.loc[SBC, "status"] == "warning"
    assert written.loc[SBC, "why"].startswith("not computed: ")
