"""Sequential drift detection on sentence embeddings, calibrated once by expected run time.

alibi-detect's :class:`MMDDriftOnline` watches a sliding window of the last
``window_size`` embeddings and alarms when its squared MMD to the reference
passes a threshold. The thresholds are chosen so that, without drift, an alarm
comes on average only after ``ert`` rows (the expected run time). alibi finds
them by a bootstrap simulation in the constructor (``_configure_thresholds``)
and keeps them only in memory, in the ``thresholds`` attribute: one 0-d tensor
per step for the first ``window_size`` steps, the last one used for ever after.

Here that simulation runs once per (reference, config): its results go into
:meth:`Detector.state` and, when ``cache_dir`` is set, into a ``.npz`` file
keyed by a hash of the reference embeddings and the config, so a restart or a
second worker with the same reference skips it. The random split alibi draws
after calibration is seeded separately, so a cached start and a calibrating
start build the same detector.

Each :meth:`~OnlineEmbeddingMMD.detect` call starts from the calibrated start
(``t = 0``) and feeds the current window's rows in order, stopping at the first
alarm: the finding names that row and the request ids of the rows in the
sliding window at that moment. With a window of ``n`` rows the chance of a
false alarm is roughly ``n / ert``.

alibi's LSDDDriftOnline was tried too and left out: on short templated texts
(the check-suite example) its statistic stayed below the threshold for a
complete change of topic, because shifted rows lie far from every kernel centre
(the centres are reference rows), so a window of them looks like an empty one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from detectors.base import Detector, DetectorConfig, DetectorNotReady, Example, Finding
from detectors.embedding import (
    Embedder,
    EmbedderConfig,
    column_texts,
    example_windows,
    request_ids,
    sample_rows,
)
from detectors.registry import register

Source = Literal["calibrated", "cache", "state"]


class OnlineConfig(DetectorConfig):
    """Settings of an online embedding detector (what the threshold cache is keyed on, plus the text)."""

    column: Literal["prompt", "response"] = "prompt"
    reference_size: int = Field(500, ge=20, description="Reference rows sampled for the detector")
    seed: int = 0
    ert: float = Field(5000.0, gt=1, description="Expected rows between false alarms when nothing drifts")
    window_size: int = Field(20, ge=2, description="Rows in the sliding test window")
    n_bootstraps: int = Field(20_000, ge=100, description="Bootstrap simulations for the thresholds")
    cache_dir: str | None = Field(None, description="Folder for calibrated thresholds; None: no disk cache")
    backend: Literal["pytorch"] = "pytorch"
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)

    @model_validator(mode="after")
    def _enough_bootstraps(self) -> OnlineConfig:
        # alibi estimates the (1 - 1/ert) quantile and drops the exceeding samples at each of
        # window_size steps; with fewer than about 2 x ert samples the estimate fails (10x is better).
        if self.n_bootstraps < 2 * self.ert:
            raise ValueError(f"n_bootstraps ({self.n_bootstraps}) must be at least 2 x ert ({self.ert:g})")
        return self


@dataclass(frozen=True)
class Calibration:
    """The outcome of alibi's bootstrap threshold simulation, and where it came from this time."""

    thresholds: np.ndarray  # float32, one per step up to window_size
    source: Source
    seconds: float  # time spent calibrating or loading


@dataclass(frozen=True)
class Run:
    """What feeding one window produced: first alarm row (or None) and the statistics seen."""

    detection_row: int | None
    test_stats: np.ndarray
    thresholds: np.ndarray


#: How many times alibi's bootstrap simulation ran in this process (tests check the cache by it).
calibration_count = 0


def cache_key(reference: np.ndarray, settings: dict[str, Any]) -> str:
    """A hex digest of the reference embeddings and the settings that shape the thresholds."""
    digest = hashlib.sha256(np.ascontiguousarray(reference, dtype=np.float32).tobytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def read_cache(path: Path) -> np.ndarray | None:
    """Thresholds from a cache file, or None if it is absent or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return np.asarray(arrays["thresholds"], dtype=np.float32)
    except (OSError, KeyError, ValueError):
        return None


def write_cache(path: Path, thresholds: np.ndarray) -> None:
    """Write a cache file atomically, so a concurrent reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(handle, "wb") as out:
        np.savez(out, thresholds=thresholds)
    os.replace(tmp, path)


def _as_tensors(thresholds: np.ndarray) -> list[Any]:
    """Thresholds in the form alibi compares against (0-d float32 tensors)."""
    import torch

    return [torch.from_numpy(np.array(value, dtype=np.float32)) for value in thresholds]


class _PresetThresholds:
    """Mixin for alibi's MMDDriftOnlineTorch: skip the calibration when thresholds are given.

    alibi calibrates inside ``__init__``; overriding the two hooks it calls there
    is the only way to hand it stored thresholds.
    """

    thresholds: Any

    def __init__(self, *args: Any, preset: np.ndarray | None, seed: int, **kwargs: Any) -> None:
        self._preset = preset
        self._split_seed = seed
        super().__init__(*args, **kwargs)

    def _configure_thresholds(self) -> None:
        global calibration_count
        if self._preset is None:
            calibration_count += 1
            super()._configure_thresholds()  # type: ignore[misc]
            self._preset = np.array([float(t) for t in self.thresholds], dtype=np.float32)
        # Calibrated or not, compare against the stored float32 form so both starts agree exactly.
        self.thresholds = _as_tensors(self._preset)

    def _configure_ref_subset(self) -> None:
        import torch

        # Calibration consumes random numbers; reseed so cached and calibrated starts split alike.
        torch.manual_seed(self._split_seed + 1)
        super()._configure_ref_subset()  # type: ignore[misc]


def _online_class() -> Any:
    from alibi_detect.cd.pytorch.mmd_online import MMDDriftOnlineTorch

    return type("PresetMMDDriftOnlineTorch", (_PresetThresholds, MMDDriftOnlineTorch), {})


@register
class OnlineEmbeddingMMD(Detector[Any]):
    """alibi-detect MMDDriftOnline on sentence embeddings, thresholds calibrated once and cached."""

    id = "drift.embedding_mmd_online.v1"
    Config = OnlineConfig

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.embedder = Embedder(config.embedder)
        self._reference: np.ndarray | None = None
        self._online: Any = None
        self.calibration: Calibration | None = None

    def _settings(self) -> dict[str, Any]:
        """The config fields that change the thresholds (not the text column or embedder)."""
        import alibi_detect

        keep = set(self.config.model_fields) - {"column", "embedder", "cache_dir", "reference_size"}
        return {
            "detector": self.id,
            "alibi": alibi_detect.__version__,
            **self.config.model_dump(include=keep),
        }

    def fit(self, reference: pd.DataFrame) -> None:
        """Embed a sample of the reference window and calibrate (or load) the thresholds."""
        texts = column_texts(reference, self.config.column)
        positions = sample_rows(len(texts), self.config.reference_size, self.config.seed)
        self.fit_embeddings(self.embedder.embed([texts[p] for p in positions]))

    def fit_embeddings(self, reference: np.ndarray, thresholds: np.ndarray | None = None) -> None:
        """Use already computed reference embeddings; given ``thresholds`` skip calibration."""
        reference = np.ascontiguousarray(reference, dtype=np.float32)
        if len(reference) < 2 * self.config.window_size + 10:
            raise DetectorNotReady(
                f"{self.id}: a reference of {len(reference)} rows is too small for window_size "
                f"{self.config.window_size} (needs at least {2 * self.config.window_size + 10})"
            )
        source: Source = "state"
        cache_file = None
        if self.config.cache_dir is not None:
            key = cache_key(reference, self._settings())
            cache_file = Path(self.config.cache_dir) / f"mmd_online-{key[:32]}.npz"
        if thresholds is None and cache_file is not None:
            thresholds = read_cache(cache_file)
            source = "cache"
        started = time.perf_counter()
        self._online = self._construct(reference, thresholds)
        if thresholds is None:
            source = "calibrated"
            thresholds = self._online._preset
            if cache_file is not None:
                write_cache(cache_file, thresholds)
        self._reference = reference
        self.calibration = Calibration(thresholds, source, time.perf_counter() - started)

    def _construct(self, reference: np.ndarray, thresholds: np.ndarray | None) -> Any:
        import torch

        # Seeded and forked: alibi draws its splits from torch's global generator.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            return _online_class()(
                reference,
                preset=thresholds,
                seed=self.config.seed,
                ert=self.config.ert,
                window_size=self.config.window_size,
                n_bootstraps=self.config.n_bootstraps,
                device="cpu",
                verbose=False,
            )

    def run(self, embeddings: np.ndarray) -> Run:
        """Feed embeddings in order from the calibrated start; stop at the first alarm."""
        if self._online is None:
            raise DetectorNotReady(f"{self.id}: call fit() or restore() first")
        self._online.reset_state()
        stats, limits = [], []
        for row, vector in enumerate(embeddings):
            data = self._online.predict(vector, return_test_stat=True)["data"]
            stats.append(float(data["test_stat"]))
            limits.append(float(data["threshold"]))
            if data["is_drift"]:
                return Run(row, np.array(stats), np.array(limits))
        return Run(None, np.array(stats), np.array(limits))

    def detect(self, current: pd.DataFrame) -> Finding:
        """Feed the current window's rows in order; drift if and where the threshold is crossed."""
        if self._online is None or self._reference is None:
            raise DetectorNotReady(f"{self.id}: call fit() or restore() first")
        texts = column_texts(current, self.config.column)
        result = self.run(self.embedder.embed(texts))
        fed = len(result.test_stats)
        ratios = result.test_stats / result.thresholds if fed else np.zeros(1)
        at = result.detection_row if result.detection_row is not None else int(np.argmax(ratios))
        measurements = {
            "rows_fed": float(fed),
            "max_statistic_over_threshold": float(ratios.max()),
            "ert": self.config.ert,
            "window_size": float(self.config.window_size),
        }
        flagged: list[str] = []
        if result.detection_row is not None:
            measurements["detection_row"] = float(result.detection_row)
            start = max(0, result.detection_row - self.config.window_size + 1)
            flagged = request_ids(current, range(start, result.detection_row + 1))
        return Finding(
            detector_id=self.id,
            verdict="ok" if result.detection_row is None else "drift",
            reference_size=len(self._reference),
            current_size=len(current),
            statistic=float(result.test_stats[at]) if fed else None,
            threshold=float(result.thresholds[at]) if fed else None,
            score=float(ratios[at]) if fed else None,
            request_ids=flagged,
            measurements=measurements,
        )

    def state(self) -> dict[str, np.ndarray]:
        """Reference embeddings and the calibrated thresholds."""
        if self._reference is None or self.calibration is None:
            raise DetectorNotReady(f"{self.id}: nothing to save before fit()")
        return {"reference_embeddings": self._reference, "thresholds": self.calibration.thresholds}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Rebuild from saved embeddings and thresholds, without recalibrating."""
        self.fit_embeddings(state["reference_embeddings"], state["thresholds"])

    @classmethod
    def example(cls, seed: int = 0) -> Example[Any]:
        """Support questions as reference and no-shift window; coding questions as the shift."""
        reference, current, shifted = example_windows(seed, rows=100)
        config = OnlineConfig(reference_size=100, window_size=10, ert=500.0, n_bootstraps=1000)
        return Example(config, reference, current, shifted)
