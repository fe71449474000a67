"""The index build copies a shard while writes go on and catches the copy up with writes
paused: afterwards the copy equals the shard byte for byte, whatever changed meanwhile
(files rewritten in place, grown, shrunk, added, removed; sparse files)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from backend.stores.vectors import edge
from backend.stores.vectors.edge import _catch_up_tree, _copy_file


def tree(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = None
        for f in files:
            path = os.path.join(dirpath, f)
            out[os.path.relpath(path, root)] = Path(path).read_bytes()
    return out


def write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_catch_up_makes_the_copy_equal(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "seg" / "a").mkdir(parents=True)
    (src / "gone").mkdir()
    (src / "gone" / "x").write_bytes(b"x" * 100)
    sparse = src / "wal"
    with open(sparse, "wb") as f:
        f.truncate(5 << 20)  # a hole, as the write-ahead log's segments
    write_at(sparse, 1 << 20, b"record" * 1000)
    (src / "seg" / "a" / "vectors").write_bytes(os.urandom(3 << 20) + b"tail")
    (src / "seg" / "grows").write_bytes(b"g" * 10)
    (src / "seg" / "shrinks").write_bytes(b"s" * (2 << 20))
    (src / "removed").write_bytes(b"r")
    shutil.copytree(src, dst, copy_function=_copy_file)
    assert tree(src) == tree(dst)

    # Changes made after the copy.
    write_at(src / "seg" / "a" / "vectors", (1 << 20) + 7, b"changed")
    write_at(src / "seg" / "a" / "vectors", (3 << 20) - 1, b"!")  # across a chunk edge
    write_at(sparse, 3 << 20, b"into the hole")
    write_at(sparse, 1 << 20, b"RECORD")
    with open(src / "seg" / "grows", "ab") as f:
        f.write(b"more" * 300_000)
    with open(src / "seg" / "shrinks", "r+b") as f:
        f.truncate(1000)
    (src / "removed").unlink()
    shutil.rmtree(src / "gone")
    (src / "seg" / "new").mkdir()
    (src / "seg" / "new" / "file").write_bytes(b"n" * 5000)
    (src / "gone2").write_bytes(b"was a directory in the copy")
    (dst / "gone2").mkdir()
    (dst / "seg" / "stray").write_bytes(b"only in the copy")
    # Data in the copy where the source has a hole.
    write_at(dst / "wal", 4 << 20, b"stale")

    _catch_up_tree(str(src), str(dst))
    assert tree(src) == tree(dst)
    assert os.path.getsize(dst / "wal") == 5 << 20


def test_catch_up_writes_only_what_changed(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(4 << 20))
    shutil.copytree(src, dst, copy_function=_copy_file)
    write_at(src / "big", 2 << 20, b"one change")
    writes: list[int] = []
    pwrite = os.pwrite

    def counting(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        writes.append(offset)
        return pwrite(fd, data, offset)

    os.pwrite = counting  # type: ignore[assignment]
    try:
        _catch_up_tree(str(src), str(dst))
    finally:
        os.pwrite = pwrite  # type: ignore[assignment]
    assert writes == [2 << 20]  # one chunk of four
    assert edge._CHUNK == 1 << 20
    assert tree(src) == tree(dst)
