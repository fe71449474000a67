"""Text encoder threads: today's fixed thread count (USE: min(4, CPUs) BLAS threads on every
call; MiniLM ONNX: one session with one intra-op thread per CPU) beside the batch-size
policy of encoders/threads.py (one thread below 64 texts), per call p50 at batch 1, 4 and
32, with no extra load from this script and while another process keeps one core busy
(a server's request handling, or the other people on a shared box).

    .venv/bin/python -m bench.encoder_threads [--calls 40]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

from bench._common import machine, pct, table
from bench.encoding import TEXTS
from encoders.threads import ThreadPolicy, usable_cpus


def _burn(stop: Any) -> None:
    x = 0
    while not stop.is_set():
        for i in range(100_000):
            x += i * i


def _samples(fn: Callable[[], object], calls: int) -> list[float]:
    fn()
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=40, help="per batch size (a quarter at 32)")
    args = ap.parse_args()
    from encoders.optimized import OnnxMiniLMTextEncoder
    from encoders.text import MultilingualTextEncoder

    cpus = usable_cpus()
    print(f"# text encoder threads\n{machine()}\n")
    today = ThreadPolicy(max_threads=min(4, cpus), bulk_batch=1)  # every call, every size
    new = ThreadPolicy.for_setting(0)
    use = MultilingualTextEncoder(device="cpu")
    minilm = OnnxMiniLMTextEncoder()
    use.load()
    minilm.load()
    models: list[tuple[str, Any]] = [("USE-m3 (numpy BLAS)", use),
                                     ("MiniLM-L6 (ONNX Runtime)", minilm)]
    rows: list[list[object]] = []
    stop = multiprocessing.Event()
    for load in ("no extra load", "one core busy"):
        burner = None
        if load != "no extra load":
            burner = multiprocessing.Process(target=_burn, args=(stop,), daemon=True)
            burner.start()
            time.sleep(0.5)
        for name, model in models:
            for bs in (1, 4, 32):
                batch = TEXTS[:bs]
                calls = args.calls if bs < 32 else max(5, args.calls // 4)
                p50 = {}
                for label, policy in (("today", today), ("policy", new)):
                    model.policy = policy
                    def call(b: list[str] = batch, m: Any = model) -> object:
                        return m.encode(b)

                    p50[label] = pct(_samples(call, calls), 50)
                rows.append([load, name, bs, today.threads_for(bs), p50["today"],
                             new.threads_for(bs), p50["policy"],
                             f"{p50['today'] / p50['policy']:.1f}x"])
        if burner is not None:
            stop.set()
            burner.join()
    print(table(["machine", "model", "batch", "threads today", "p50 ms today",
                 "threads policy", "p50 ms policy", "speed-up"], rows))


if __name__ == "__main__":
    main()
