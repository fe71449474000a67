"""The committed gRPC stubs must be exactly what scripts/gen_protos.sh makes from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "backend/transport/grpc/generated"


def test_generated_stubs_are_current(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts/gen_protos.sh"), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        capture_output=True,
    )
    fresh = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert fresh, "generator produced nothing"
    for path in fresh:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} is missing: run scripts/gen_protos.sh"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed.relative_to(ROOT)} is stale: run scripts/gen_protos.sh"
        )
