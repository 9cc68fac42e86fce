"""run_detectors: the one way the stream and both file commands run detectors and correct their findings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from detectors.base import Finding
from detectors.correction import Correction, correct
from detectors.run import DetectorRun, Judged, run_detectors
from schemas.errors import ConfigError


def _frames(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    reference = pd.DataFrame({"a": rng.normal(0, 1, 500), "b": rng.normal(0, 1, 500)})
    current = pd.DataFrame({"a": rng.normal(1, 1, 500), "b": rng.normal(0, 1, 500)})
    return reference, current


def _finding(p_value: float, verdict: str) -> Finding:
    return Finding.model_validate(
        {
            "detector_id": "drift.ks.v1",
            "verdict": verdict,
            "reference_size": 100,
            "current_size": 100,
            "p_value": p_value,
        }
    )


def test_findings_come_in_spec_order_with_their_full_config_and_corrected_together() -> None:
    reference, current = _frames()
    specs = [DetectorRun("drift.ks.v1", {"column": "a"}), DetectorRun("drift.ks.v1", {"column": "b"})]
    raw = run_detectors(specs, reference, current, correction=None)
    judged = run_detectors(specs, reference, current)
    assert [j.config["column"] for j in judged] == ["a", "b"]
    assert judged[0].config == {
        "column": "a",
        "alpha": 0.05,
        "min_samples": 30,
        "min_effect_size": 0.1,
        "method": "asymp",
    }
    assert [j.finding.verdict for j in judged] == ["drift", "ok"]
    assert [j.finding for j in judged] == correct([j.finding for j in raw], method="bh", alpha=0.05)
    assert all("p_value_adjusted" not in j.finding.measurements for j in raw)


def test_the_correction_takes_back_a_verdict_that_is_significant_only_alone() -> None:
    reference, current = _frames()
    computed = [
        Judged({}, _finding(0.02, "drift")),
        Judged({}, _finding(0.5, "ok")),
        Judged({}, _finding(0.6, "ok")),
    ]
    alone = run_detectors([], reference, current, correction=None, computed=computed)
    together = run_detectors([], reference, current, Correction("bh", 0.05), computed=computed)
    assert [j.finding.verdict for j in alone] == ["drift", "ok", "ok"]
    assert [j.finding.verdict for j in together] == ["ok", "ok", "ok"]
    assert together[0].finding.measurements["p_value_adjusted"] == pytest.approx(0.06)
    bonferroni = run_detectors([], reference, current, Correction("bonferroni", 0.1), computed=computed)
    assert bonferroni[0].finding.measurements["p_value_adjusted"] == pytest.approx(0.06)
    assert bonferroni[0].finding.verdict == "drift"


def test_a_failing_detector_is_handed_over_and_the_others_still_report() -> None:
    reference, current = _frames()
    specs = [DetectorRun("drift.ks.v1", {"column": "missing"}), DetectorRun("drift.ks.v1", {"column": "a"})]
    failed: list[tuple[str, type[Exception]]] = []
    judged = run_detectors(
        specs,
        reference,
        current,
        on_error=lambda spec, error: failed.append((spec.config["column"], type(error))),
    )
    assert failed == [("missing", ConfigError)]
    assert [j.config["column"] for j in judged] == ["a"]
    # A file command has no one to hand it to: the error stops it.
    with pytest.raises(ConfigError, match="no column 'missing'"):
        run_detectors(specs, reference, current)
