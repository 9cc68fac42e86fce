"""Evidence gates: minimum samples, minimum effect size, N consecutive windows (hysteresis)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple

from retrain_trigger.alerts import AlertRecord
from retrain_trigger.policy import Rule
from retrain_trigger.revisions import GateMark, WindowUpdate
from schemas.events import Detection

if TYPE_CHECKING:
    from retrain_trigger.context import DecideContext

Outcome = Literal["breach", "clear", "skip"]


# NamedTuples, not frozen dataclasses: two are built per rule and detection, and a
# frozen dataclass pays object.__setattr__ for every field.
class Evidence(NamedTuple):
    """What one window says for one rule: a breach, a clear window, or no evidence (skipped).

    ``immediate``: a breach strong enough (``gates.immediate_p_value``) to fire at once.
    """

    outcome: Outcome
    reason: str
    immediate: bool = False


def p_value_of(detection: Detection) -> float | None:
    """The p-value a detection's verdict rests on: the adjusted one when the window was corrected."""
    return detection.measurements.get("p_value_adjusted", detection.p_value)


def judge(rule: Rule, detection: Detection) -> Evidence:
    """Classify one detection for one rule (pure: no state)."""
    gates = rule.gates
    if detection.current_size < gates.min_samples:
        # Too small a window says nothing either way: it neither fires nor resolves.
        return Evidence("skip", f"{detection.current_size} samples < min_samples {gates.min_samples}")
    if detection.verdict not in rule.match.verdicts:
        return Evidence("clear", f"verdict {detection.verdict}")
    effect = detection.effect_size
    if gates.min_effect_size is not None and effect is not None and abs(effect) < gates.min_effect_size:
        return Evidence(
            "clear", f"verdict {detection.verdict} but |effect| {abs(effect):.3g} < {gates.min_effect_size}"
        )
    p = p_value_of(detection)
    if gates.max_p_value is not None and (p is None or not p < gates.max_p_value):
        # One window at the detector's alpha is expected now and then on a healthy version.
        shown = "no p-value" if p is None else f"p {p:.2g}"
        return Evidence(
            "clear", f"verdict {detection.verdict} but {shown} >= max_p_value {gates.max_p_value}"
        )
    immediate = gates.immediate_p_value is not None and p is not None and p < gates.immediate_p_value
    reason = f"verdict {detection.verdict}" + (
        f", p {p:.2g} < {gates.immediate_p_value}" if immediate else ""
    )
    return Evidence("breach", reason, immediate)


class Step(NamedTuple):
    """The counters after one window, and whether the alert fires or resolves on it."""

    breaches: int
    clears: int
    fires: bool
    resolves: bool


def step(
    rule: Rule, firing: bool, breaches: int, clears: int, outcome: Outcome, immediate: bool = False
) -> Step:
    """Advance the consecutive-window counters of one alert (hysteresis in both directions)."""
    if outcome == "skip":
        return Step(breaches, clears, False, False)
    if outcome == "breach":
        breaches, clears = breaches + 1, 0
        enough = immediate or breaches >= rule.gates.for_windows
        return Step(breaches, clears, not firing and enough, False)
    breaches, clears = 0, clears + 1
    return Step(breaches, clears, False, firing and clears >= rule.gates.resolve_windows)


class GatesStage:
    """Gates: each matched rule's evidence moves its alert to pending, firing or resolved (or resets it).

    A correction of the window an alert counted last (``ctx.window`` is
    ``latest``) replaces that window's outcome: the counters go back to what
    they were before it, then count the corrected outcome. It may fire an alert
    that was not firing, never resolves one, and a window older than that
    (``older``) only updates the alert's values.
    """

    def run(self, ctx: DecideContext) -> bool:
        """Update the alerts of the matched rules; ``ctx.changed`` when one fired or resolved."""
        detection = ctx.detection
        if detection is None:
            return True
        segment = detection.segment
        alerts = ctx.state.book.alerts
        ledger = ctx.state.windows
        update = ctx.window or WindowUpdate("new", detection)
        now, log, alert_id = ctx.now, ctx.log, ctx.index.alert_id
        # This runs per rule and detection: without explain, no reason text is even built.
        explain = ctx.explain
        for rule in ctx.matched:
            evidence = judge(rule, detection)
            fp, labels = alert_id(rule, detection)
            subject = (
                f"{rule.name} {detection.detector_id} {segment.model}/{segment.model_version}"
                if explain
                else ""
            )
            record = alerts.get(fp)
            prior = None
            if update.kind != "new":
                mark = ledger.gates.get(fp)
                prior = mark if mark is not None and mark.window == update.key else None
                if update.kind == "older" or (prior is not None and prior.firing and record is None):
                    # An older window, or the one the alert resolved on: its numbers, nothing more.
                    if record is not None:
                        record.revise(detection)
                    if explain:
                        log("gates", subject, False, f"revision {detection.revision}: values only")
                    continue
            if record is None and evidence.outcome != "breach":
                if explain:
                    log("gates", subject, False, f"{evidence.reason}: nothing to do")
                continue
            firing = record is not None and record.status == "firing"
            if prior is not None:
                before = (prior.breaches, prior.clears)
            else:
                before = (record.breaches, record.clears) if record else (0, 0)
                ledger.mark_gate(
                    fp,
                    GateMark(
                        window=update.key,
                        breaches=before[0],
                        clears=before[1],
                        firing=firing,
                        starts_at=record.starts_at if record else None,
                    ),
                )
            counters = step(rule, firing, before[0], before[1], evidence.outcome, evidence.immediate)
            if record is None:
                record = AlertRecord(
                    fingerprint=fp,
                    rule=rule.name,
                    labels=labels,
                    starts_at=(prior.starts_at if prior else None) or detection.window_start,
                    last_seen=now,
                )
                alerts[fp] = record
            record.breaches, record.clears, record.last_seen = counters.breaches, counters.clears, now
            if update.kind == "new":
                if evidence.outcome == "breach":
                    record.remember(detection)
            elif not record.revise(detection) and evidence.outcome == "breach":
                record.remember(detection)
            if counters.fires:
                record.status = "firing"
                ctx.changed = True
                if explain:
                    log(
                        "gates",
                        subject,
                        True,
                        f"{evidence.reason}: fires after {counters.breaches} window(s)",
                    )
            elif counters.resolves and update.kind != "new":
                if explain:
                    log("gates", subject, False, f"{evidence.reason}: a revision resolves nothing by itself")
            elif counters.resolves:
                del alerts[fp]
                ctx.resolved.append((record, detection.window_end))
                ctx.changed = True
                if explain:
                    log(
                        "gates",
                        subject,
                        True,
                        f"{evidence.reason}: resolves after {counters.clears} clear window(s)",
                    )
            elif evidence.outcome == "clear" and record.status == "pending":
                del alerts[fp]
                if explain:
                    log("gates", subject, False, f"{evidence.reason}: pending alert reset")
            elif explain:
                need = rule.gates.for_windows if evidence.outcome == "breach" else rule.gates.resolve_windows
                have = counters.breaches if evidence.outcome == "breach" else counters.clears
                if firing and evidence.outcome == "breach":
                    progress = f"still firing ({have} breaching windows)"
                else:
                    progress = f"{record.status}, {have} of {need} window(s)"
                log("gates", subject, False, f"{evidence.reason}: {progress}")
        return True
