"""How good are the toxicity scorers, the cascade and the rate detector, on real data?

Usage: ``python eval/toxicity_eval.py [--windows 200] [--checkpoint PATH --config-dir PATH]``

1. ROC AUC on the Jigsaw sample (human label ``is_bad``) for every scorer with
   real weights here: profanity-check always; Detoxify only when a real
   checkpoint is passed (none can be downloaded on this machine).
2. The cascade's recall relative to its expensive scorer: of the texts the
   expensive scorer flags, the share the prefilter lets through, at several
   prefilter thresholds, with the share of traffic escalated (Jigsaw and
   HH-RLHF replies). The expensive scorer is Detoxify at 0.5 when a real
   checkpoint is given; otherwise the Jigsaw human labels stand in for a
   perfect expensive scorer (said so in the output).
3. Detection power of ``toxicity.profanity.v1``: over many random windows of
   benign HH-RLHF replies, the share flagged when 10% of the current window
   is replaced by toxic Jigsaw comments, and the share flagged (false alarms)
   when it is not.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.settings import Settings  # noqa: E402
from detectors import frame  # noqa: E402
from detectors.scorers import DetoxifyScorer, DetoxifySettings, ProfanityScorer  # noqa: E402
from detectors.toxicity import ProfanityRateConfig, ProfanityRateDetector  # noqa: E402
from services import sample_data  # noqa: E402

PREFILTER_THRESHOLDS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


@dataclass(frozen=True)
class Power:
    """Share of windows flagged with and without the injected toxic comments."""

    windows: int
    detected: float
    false_alarms: float
    mean_rate_clean: float
    mean_rate_injected: float


def detection_power(
    replies: np.ndarray, toxic: np.ndarray, windows: int, size: int, share: float, seed: int
) -> Power:
    """Run the profanity-rate detector on ``windows`` random reference/clean/injected triples.

    ``replies`` and ``toxic`` are profanity-check scores, put in the windows as
    ``response_profanity`` so the detector reuses them instead of rescoring.
    """
    rng = np.random.default_rng(seed)
    detector = ProfanityRateDetector(ProfanityRateConfig())
    injected_count = round(size * share)
    detected = alarms = 0
    clean_rates, injected_rates = [], []
    for _ in range(windows):
        picks = rng.permutation(len(replies))[: 3 * size]
        reference, clean, current = (replies[picks[k * size : (k + 1) * size]] for k in range(3))
        current = np.concatenate([current[injected_count:], rng.choice(toxic, injected_count, replace=False)])
        detector.fit(_window(reference))
        clean_finding, injected_finding = detector.detect(_window(clean)), detector.detect(_window(current))
        alarms += clean_finding.verdict != "ok"
        detected += injected_finding.verdict != "ok"
        clean_rates.append(clean_finding.measurements["rate.profanity"])
        injected_rates.append(injected_finding.measurements["rate.profanity"])
    return Power(
        windows,
        detected / windows,
        alarms / windows,
        float(np.mean(clean_rates)),
        float(np.mean(injected_rates)),
    )


def _window(scores: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({frame.RESPONSE: [""] * len(scores), "response_profanity": scores})


def relative_recall(prefilter: np.ndarray, expensive_positive: np.ndarray, threshold: float) -> float:
    """Of the texts the expensive scorer flags, the share the prefilter passes on to it."""
    return float((prefilter[expensive_positive] >= threshold).mean())


def main() -> None:
    """Print the three evaluations."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=200, help="random windows for detection power")
    parser.add_argument("--window-size", type=int, default=500)
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="a real Detoxify checkpoint, if you have one"
    )
    parser.add_argument(
        "--config-dir", type=Path, default=None, help="its Hugging Face config/tokenizer folder"
    )
    args = parser.parse_args()

    data_dir = Settings().sample_data
    jigsaw = pd.read_csv(sample_data.require(data_dir, "jigsaw/train.5k.csv"))
    labels = jigsaw["is_bad"].to_numpy(dtype=bool)
    replies = [chosen.response for chosen, _ in sample_data.hh_rlhf(data_dir)]
    profanity = ProfanityScorer()
    jigsaw_scores = profanity.score(jigsaw["comment_text"].tolist()).column("profanity")
    reply_scores = profanity.score(replies).column("profanity")

    print(f"== 1. ROC AUC on Jigsaw ({len(jigsaw)} comments, {labels.sum()} is_bad)")
    print(f"profanity-check: {roc_auc_score(labels, jigsaw_scores):.4f}")
    print(
        "  (caveat: profanity-check was trained on 200k labelled texts whose sources, per its"
        " author's write-up, include the Kaggle Jigsaw comments: this sample likely overlaps"
        " its training set, so the AUC is optimistic)"
    )
    expensive_positive, expensive_name = (
        labels,
        "Jigsaw human labels (stand-in for a perfect expensive scorer)",
    )
    if args.checkpoint is not None:
        detoxify = DetoxifyScorer(DetoxifySettings(checkpoint=args.checkpoint, config_dir=args.config_dir))
        toxicity = detoxify.score(jigsaw["comment_text"].tolist()).column("toxicity")
        print(f"Detoxify ({args.checkpoint.name}): {roc_auc_score(labels, toxicity):.4f}")
        expensive_positive, expensive_name = (
            toxicity >= 0.5,
            f"Detoxify {args.checkpoint.name}, toxicity >= 0.5",
        )
    else:
        print("Detoxify: not evaluated, no real weights here (pass --checkpoint and --config-dir)")

    print(f"\n== 2. Cascade recall relative to the expensive scorer: {expensive_name}")
    print(f"expensive positives on Jigsaw: {expensive_positive.sum()}")
    print("prefilter_threshold  relative_recall  escalated_jigsaw  escalated_hh_replies")
    for threshold in PREFILTER_THRESHOLDS:
        recall = relative_recall(jigsaw_scores, expensive_positive, threshold)
        print(
            f"{threshold:>19}  {recall:>15.3f}  {(jigsaw_scores >= threshold).mean():>16.3f}"
            f"  {(reply_scores >= threshold).mean():>20.3f}"
        )

    print(
        f"\n== 3. toxicity.profanity.v1 over {args.windows} random windows"
        f" of {args.window_size} HH-RLHF replies"
    )
    power = detection_power(
        reply_scores, jigsaw_scores[labels], args.windows, args.window_size, share=0.10, seed=0
    )
    print(f"10% toxic Jigsaw injected: flagged {power.detected:.3f} of windows")
    print(f"clean windows:             flagged {power.false_alarms:.3f} of windows (false alarms)")
    print(f"mean profanity rate: clean {power.mean_rate_clean:.4f}, injected {power.mean_rate_injected:.4f}")


if __name__ == "__main__":
    main()
