"""Text scorers for toxicity: Detoxify (expensive), profanity-check (cheap) and a cascade of the two.

Every scorer turns a list of texts into :class:`LabelScores`: one probability
in [0, 1] per label and text, in input order. torch, detoxify and
profanity_check are imported inside the functions that need them, so
importing this module stays cheap.

Detoxify is loaded with its own code (``detoxify.Detoxify``), but scored
here rather than through ``Detoxify.predict``: predict sends every text in
one padded batch and does not cut texts to the model's length (its
tokenizer, loaded from a config folder, has no ``model_max_length``), so one
long LLM reply crashes it. :class:`DetoxifyScorer` truncates to the model's
position limit, sorts texts by length so each batch pads little, and caps
torch's threads.
"""

from __future__ import annotations

import functools
import io
import logging
import pickle
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import LoopwatchError

log = logging.getLogger(__name__)

#: The labels of Detoxify's ``original`` model (Jigsaw Toxic Comment Classification).
ORIGINAL_LABELS = ("toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack")
#: The one label of the profanity-check scorer.
PROFANITY_LABEL: Final = "profanity"

# RoBERTa-family models number positions from ``pad_token_id + 1``, so that many
# position slots can never hold a token.
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "camembert"}


class ScorerUnavailable(LoopwatchError):
    """A scorer's model could not be loaded (no weights, no network, a broken checkpoint).

    The message says what to do about it; ``reason`` is only the cause, for one-line warnings.
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


@dataclass(frozen=True)
class LabelScores:
    """Scores of ``len(values)`` texts: ``values[i, j]`` is text i's probability of ``labels[j]``."""

    labels: tuple[str, ...]
    values: np.ndarray

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[1] != len(self.labels):
            raise ValueError(f"values of shape {self.values.shape} do not match labels {self.labels}")

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def column(self, label: str) -> np.ndarray:
        """The scores of one label, one per text."""
        return self.values[:, self.labels.index(label)]

    def to_frame(self, prefix: str = "") -> pd.DataFrame:
        """One column per label, named ``prefix + label``."""
        return pd.DataFrame(self.values, columns=[prefix + label for label in self.labels])


class TextScorer(Protocol):
    """Anything that scores texts: ``labels`` it returns and ``score(texts)``."""

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels :meth:`score` returns, in column order."""
        ...

    def score(self, texts: Sequence[str]) -> LabelScores:
        """Per-label scores in [0, 1] for each text, in input order."""
        ...


class DetoxifySettings(BaseModel):
    """Which Detoxify model to load and how to run it.

    With internet, the defaults download Detoxify's ``original`` weights.
    Offline, point ``checkpoint`` at a Detoxify ``.ckpt`` file and
    ``config_dir`` at a folder with the model's Hugging Face ``config.json``
    (with the checkpoint's number of labels) and tokenizer files.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_type: str = Field("original", description="Detoxify model: original, unbiased, multilingual, ...")
    checkpoint: Path | None = Field(None, description="A local Detoxify checkpoint instead of the download")
    config_dir: Path | None = Field(None, description="Local Hugging Face config and tokenizer folder")
    device: str = Field("cpu", description="torch device")
    batch_size: int = Field(32, ge=1, description="Texts per forward pass")
    max_tokens: int | None = Field(
        None, ge=8, description="Truncate to this many tokens [default: model limit]"
    )
    threads: int = Field(2, ge=1, description="torch threads while scoring")
    quantize: bool = Field(
        False,
        description="int8 dynamic quantization of the linear layers (CPU): several times faster, "
        "scores differ slightly from the float model",
    )


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices of the texts in batches of similar length (shortest first), so batches pad little.

    >>> [b.tolist() for b in length_buckets([5, 1, 9, 2], batch_size=2)]
    [[1, 3], [0, 2]]
    """
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@contextmanager
def thread_budget(threads: int) -> Iterator[None]:
    """Run torch on at most ``threads`` threads inside the block, then restore the previous count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def token_limit(model: Any, tokenizer: Any, cap: int | None = None) -> int:
    """The most tokens (special tokens included) ``model`` can take in one text."""
    config = model.config
    positions = int(config.max_position_embeddings)
    if config.model_type in _OFFSET_POSITION_MODELS:
        positions -= int(config.pad_token_id) + 1
    # A tokenizer loaded from a bare folder reports a huge sentinel here; the model's
    # position table is the real limit.
    limit = min(positions, int(tokenizer.model_max_length))
    return min(limit, cap) if cap is not None else limit


def _unavailable_message(settings: DetoxifySettings, exc: BaseException) -> str:
    source = (
        f"checkpoint {settings.checkpoint}" if settings.checkpoint else f"model type {settings.model_type!r}"
    )
    return (
        f"could not load Detoxify ({source}): {type(exc).__name__}: {exc}. "
        "Without internet, download a Detoxify checkpoint (.ckpt) elsewhere and pass it with "
        "--checkpoint PATH, plus the model's Hugging Face config and tokenizer folder with "
        "--config-dir PATH (detector config: detoxify.checkpoint / detoxify.config_dir); "
        "or use --scorer profanity, which needs no download. Note: Detoxify 0.5.4 also looks up "
        "the hub model named in the checkpoint (config.arch.args.model_type, e.g. bert-base-uncased) "
        "even when given a config folder, so offline that name must be a local folder or be in the "
        "Hugging Face cache."
    )


class DetoxifyScorer:
    """Detoxify, loaded by its own code, scored with truncation, length buckets and a thread cap."""

    def __init__(self, settings: DetoxifySettings | None = None) -> None:
        self.settings = settings or DetoxifySettings()
        self._detoxify: Any = None

    def detoxify(self) -> Any:
        """The loaded ``detoxify.Detoxify`` object (loaded on first use)."""
        if self._detoxify is None:
            self._detoxify = self._load()
        return self._detoxify

    def _load(self) -> Any:
        from detoxify import Detoxify

        settings = self.settings
        # torch.hub prints 'Downloading: "<url>" to <file>' on stdout, where the
        # commands write their results: it goes to the log instead.
        printed = io.StringIO()
        try:
            with thread_budget(settings.threads), redirect_stdout(printed):
                detoxify = Detoxify(
                    model_type=settings.model_type,
                    checkpoint=str(settings.checkpoint) if settings.checkpoint else None,
                    device=settings.device,
                    huggingface_config_path=str(settings.config_dir) if settings.config_dir else None,
                )
        except (OSError, ValueError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as exc:
            # OSError covers failed downloads (URLError) and missing Hugging Face files; the
            # others a checkpoint file that is not a Detoxify checkpoint.
            reason = f"{type(exc).__name__}: {exc}"
            raise ScorerUnavailable(_unavailable_message(settings, exc), reason=reason) from exc
        finally:
            for line in printed.getvalue().splitlines():
                log.info("detoxify: %s", line)
        if settings.quantize:
            import torch

            # PyTorch's documented recipe for BERT on CPU: int8 weights, float activations.
            detoxify.model = torch.ao.quantization.quantize_dynamic(
                detoxify.model, {torch.nn.Linear}, dtype=torch.qint8
            )
        return detoxify

    @property
    def labels(self) -> tuple[str, ...]:
        """The model's labels, with Detoxify's standard names (``toxicity``, ``insult``, ...)."""
        return tuple(self.detoxify().class_names)

    def score(self, texts: Sequence[str]) -> LabelScores:
        """Per-label sigmoid scores for each text, in input order."""
        import torch

        detoxify = self.detoxify()
        model, tokenizer = detoxify.model, detoxify.tokenizer
        values = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        if not texts:
            return LabelScores(self.labels, values)
        limit = token_limit(model, tokenizer, self.settings.max_tokens)
        # Tokenize once without padding: the lengths pick the buckets, then each bucket is padded alone.
        encoded = tokenizer(list(texts), truncation=True, max_length=limit)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        model.eval()
        with torch.no_grad(), thread_budget(self.settings.threads):
            for batch in length_buckets(lengths, self.settings.batch_size):
                features = {key: [encoded[key][i] for i in batch] for key in encoded}
                inputs = tokenizer.pad(features, return_tensors="pt").to(model.device)
                logits = model(**inputs)[0]
                values[batch] = torch.sigmoid(logits).cpu().numpy()
        return LabelScores(self.labels, values)


@functools.lru_cache(maxsize=4)
def shared_detoxify_scorer(settings: DetoxifySettings) -> DetoxifyScorer:
    """One loaded Detoxify per settings, shared by every detector in the process."""
    return DetoxifyScorer(settings)


class ProfanityScorer:
    """alt-profanity-check: a linear model on word n-grams, thousands of texts per second."""

    @property
    def labels(self) -> tuple[str, ...]:
        """The single label ``profanity``."""
        return (PROFANITY_LABEL,)

    def score(self, texts: Sequence[str]) -> LabelScores:
        """The probability that each text is offensive, in input order."""
        if not texts:
            return LabelScores(self.labels, np.zeros((0, 1)))
        from profanity_check import predict_prob

        probabilities = np.asarray(predict_prob(list(texts)), dtype=np.float64)
        return LabelScores(self.labels, probabilities.reshape(-1, 1))


@dataclass(frozen=True)
class CascadeResult:
    """What the cascade did: the final scores, the cheap scores, and which texts it escalated."""

    scores: LabelScores
    prefilter: np.ndarray
    escalated: np.ndarray


class CascadeScorer:
    """Cheap scorer first; only texts scoring at least ``threshold`` go to the expensive scorer.

    Texts the cheap scorer clears are taken as non-toxic: every label scores 0.
    """

    def __init__(self, prefilter: TextScorer, expensive: TextScorer, threshold: float = 0.1) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.prefilter = prefilter
        self.expensive = expensive
        self.threshold = threshold

    @property
    def labels(self) -> tuple[str, ...]:
        """The expensive scorer's labels."""
        return self.expensive.labels

    def route(self, texts: Sequence[str]) -> CascadeResult:
        """Score ``texts`` through the cascade and say which ones reached the expensive scorer."""
        cheap = self.prefilter.score(texts).values.max(axis=1, initial=0.0)
        escalated = cheap >= self.threshold
        values = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        chosen = np.flatnonzero(escalated)
        if chosen.size:
            values[chosen] = self.expensive.score([texts[i] for i in chosen]).values
        return CascadeResult(LabelScores(self.labels, values), cheap, escalated)

    def score(self, texts: Sequence[str]) -> LabelScores:
        """Per-label scores for each text; 0 for texts the prefilter cleared."""
        return self.route(texts).scores


ScorerKind = Literal["detoxify", "profanity", "cascade"]


def build_scorer(
    kind: ScorerKind, settings: DetoxifySettings | None = None, prefilter_threshold: float = 0.1
) -> TextScorer:
    """The scorer of that kind: Detoxify, profanity-check, or profanity-check in front of Detoxify."""
    if kind == "profanity":
        return ProfanityScorer()
    detoxify = DetoxifyScorer(settings)
    if kind == "cascade":
        return CascadeScorer(ProfanityScorer(), detoxify, prefilter_threshold)
    return detoxify


def headline(scores: LabelScores) -> np.ndarray:
    """One toxicity number per text: the ``toxicity`` label if scored, else the highest label."""
    if "toxicity" in scores.labels:
        return scores.column("toxicity")
    return scores.values.max(axis=1, initial=0.0)


def score_records(texts: Sequence[str], scorer: TextScorer) -> list[dict[str, float | bool]]:
    """One JSON-ready record per text, in input order: ``toxicity`` and every label's score.

    Through a cascade, each record also says whether the text was ``escalated``
    to the expensive scorer and what the ``prefilter`` scored.
    """
    if isinstance(scorer, CascadeScorer):
        routed = scorer.route(texts)
        scores, extras = routed.scores, {"prefilter": routed.prefilter, "escalated": routed.escalated}
    else:
        scores, extras = scorer.score(texts), {}
    toxicity = headline(scores)
    records: list[dict[str, float | bool]] = []
    for i in range(len(scores)):
        record: dict[str, float | bool] = {"toxicity": float(toxicity[i])}
        record.update(
            {label: float(value) for label, value in zip(scores.labels, scores.values[i], strict=True)}
        )
        for name, values in extras.items():
            record[name] = bool(values[i]) if values.dtype == bool else float(values[i])
        records.append(record)
    return records
