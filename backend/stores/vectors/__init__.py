"""Vector stores: the VectorStore contract, qdrant-edge (embedded) and qdrant-client (server).

The two implementations are imported on first use: the Qdrant libraries take most of a
second to import, and code that only needs the contract types should not pay for that.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from backend.stores.vectors.base import (
    RRF_K,
    CollectionSpec,
    PayloadPatch,
    PointPayload,
    Prefetch,
    ScoredPoint,
    SparseVector,
    VectorPoint,
    VectorStore,
    category_prefixes,
    point_id,
)

if TYPE_CHECKING:
    from backend.stores.vectors.edge import EdgeVectorStore
    from backend.stores.vectors.server import QdrantServerStore

_LAZY = {
    "EdgeVectorStore": "backend.stores.vectors.edge",
    "QdrantServerStore": "backend.stores.vectors.server",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RRF_K",
    "CollectionSpec",
    "EdgeVectorStore",
    "PayloadPatch",
    "PointPayload",
    "Prefetch",
    "QdrantServerStore",
    "ScoredPoint",
    "SparseVector",
    "VectorPoint",
    "VectorStore",
    "category_prefixes",
    "point_id",
]
