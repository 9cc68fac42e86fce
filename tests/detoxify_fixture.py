"""Build a randomly initialised Detoxify checkpoint, in Detoxify's own format, for tests and benchmarks.

No Detoxify weights can be downloaded here, so tests load this instead,
through ``detoxify.Detoxify(checkpoint=..., huggingface_config_path=...)``:
the same code path a user with a real checkpoint takes offline. The
tokenizer files are bert-base-uncased's (from ``../shared/models``); the
model is a small BERT unless a bert-base-sized one is asked for.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from core.settings import Settings

#: Class names as stored in Detoxify's ``original`` checkpoint (Detoxify renames them on load).
JIGSAW_CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class DetoxifyFiles:
    """Where the built checkpoint and its Hugging Face config folder are."""

    checkpoint: Path
    config_dir: Path


def bert_base_uncased_dir() -> Path:
    """The shared bert-base-uncased config and tokenizer folder; a clear error when missing."""
    folder = Settings().sample_data.parent / "models" / "bert-base-uncased"
    if not (folder / "vocab.txt").exists():
        raise FileNotFoundError(f"bert-base-uncased tokenizer files missing at {folder}")
    return folder


def build_detoxify_checkpoint(
    folder: Path,
    *,
    layers: int = 2,
    hidden: int = 32,
    heads: int = 2,
    intermediate: int = 64,
    init_std: float = 0.2,
    seed: int = 0,
) -> DetoxifyFiles:
    """Write ``folder/model.ckpt`` and ``folder/hf`` for a random BertForSequenceClassification.

    ``layers=12, hidden=768, heads=12, intermediate=3072`` gives bert-base's shape. ``init_std``
    is wider than BERT's 0.02 so that a random model's scores differ visibly between texts.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    source = bert_base_uncased_dir()
    config_dir = folder / "hf"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name in _TOKENIZER_FILES:
        shutil.copy(source / name, config_dir / name)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=512,
        num_labels=len(JIGSAW_CLASSES),
        initializer_range=init_std,
    )
    config.save_pretrained(config_dir)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    checkpoint = folder / "model.ckpt"
    torch.save(
        {
            "config": {
                "arch": {
                    "args": {
                        # A local folder, so Detoxify's config look-up needs no download.
                        "model_type": str(config_dir),
                        "model_name": "BertForSequenceClassification",
                        "tokenizer_name": "BertTokenizer",
                        "num_classes": len(JIGSAW_CLASSES),
                    }
                },
                "dataset": {"args": {"classes": JIGSAW_CLASSES}},
            },
            "state_dict": model.state_dict(),
        },
        checkpoint,
    )
    return DetoxifyFiles(checkpoint, config_dir)
