"""Vector store on a Qdrant server or cluster, through qdrant-client.

Every write waits for the server to apply it (`wait=True`), so it is searchable when the call
returns. Collections are sharded and replicated as the spec (or the deployment) says; the
merchant index is a tenant index, so each merchant's points are stored together.

`QdrantClient(":memory:")` (local mode) runs the same code path for tests. Local mode is brute
force, ignores search parameters, has no payload indexes (creating one only warns) and is not
thread-safe; this store therefore skips indexes and search parameters there and serialises
calls with a lock. A remote client is thread-safe and used without a lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from backend.domain.types import Filters
from backend.errors import ConfigError, InvalidInput, NotReady
from backend.stores.vectors.base import (
    BOOST,
    RRF_K,
    CollectionSpec,
    FacetCounts,
    FacetQuery,
    FusedSearch,
    IndexState,
    PayloadPatch,
    PointPayload,
    Prefetch,
    ScoredPoint,
    SparseVector,
    VectorPoint,
    check_facet_query,
    check_fusion,
    check_page,
    check_prefetches,
    patch_values,
    price_band_label,
    scored_points,
    sparse_values,
    vector_values,
)
from backend.stores.vectors.filters import (
    PAYLOAD_INDEXES,
    FilterSpec,
    IndexKind,
    Range,
    facet_spec,
    filter_spec,
    products_spec,
    server_filter,
    to_server,
    with_any_of,
)

log = logging.getLogger(__name__)

_WRITE_BATCH = 256
_PAGE = 1000
# Local mode reports a missing collection only through the text of a ValueError.
_LOCAL_MISSING = re.compile(r"^Collection .* not found$")


def _index_schema(kind: IndexKind) -> models.PayloadSchemaType | models.KeywordIndexParams:
    if kind is IndexKind.TENANT:
        return models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
    return {
        IndexKind.KEYWORD: models.PayloadSchemaType.KEYWORD,
        IndexKind.FLOAT: models.PayloadSchemaType.FLOAT,
        IndexKind.INTEGER: models.PayloadSchemaType.INTEGER,
        IndexKind.BOOL: models.PayloadSchemaType.BOOL,
    }[kind]


def _vector_dims(
    vectors: models.VectorParams | dict[str, models.VectorParams] | None,
) -> dict[str, int]:
    if vectors is None:
        return {}
    if isinstance(vectors, models.VectorParams):
        return {"": vectors.size}
    return {name: params.size for name, params in vectors.items()}


def _server_message(exc: UnexpectedResponse) -> str:
    try:
        return str(json.loads(exc.content)["status"]["error"])
    except (ValueError, KeyError, TypeError):
        return exc.content.decode("utf-8", "replace")[:500] or str(exc.reason_phrase)


class QdrantServerStore(FusedSearch):
    """VectorStore on a Qdrant server (or local-mode client, for tests)."""

    def __init__(
        self,
        client: QdrantClient,
        *,
        write_ordering: models.WriteOrdering | None = None,
        write_consistency_factor: int | None = None,
        shards: int | None = None,
        replicas: int | None = None,
        hnsw_ef: int = 128,
        index_timeout_s: float = 600.0,
    ) -> None:
        """`shards`/`replicas`, when given, override the CollectionSpec's (the cluster's shape
        is a deployment setting). `write_ordering` trades write latency for consistency in a
        cluster; `write_consistency_factor` is how many replicas must confirm a write."""
        if hnsw_ef < 1:
            raise ConfigError(f"hnsw_ef must be at least 1, got {hnsw_ef}")
        for name, value in (("shards", shards), ("replicas", replicas),
                            ("write_consistency_factor", write_consistency_factor)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        self._client = client
        self._ordering = write_ordering
        self._write_consistency = write_consistency_factor
        self._shards = shards
        self._replicas = replicas
        self._hnsw_ef = hnsw_ef
        self._index_timeout_s = index_timeout_s
        options = client.init_options
        self._local = options.get("location") == ":memory:" or options.get("path") is not None
        self._local_lock = threading.RLock()
        self._schemas: dict[str, tuple[dict[str, int], list[str]]] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        api_key: str | None = None,
        prefer_grpc: bool = True,
        shards: int | None = None,
        replicas: int | None = None,
        *,
        timeout_s: int = 30,
        **kwargs: Any,
    ) -> QdrantServerStore:
        """A store on the Qdrant server at `url` (http(s)://host:6333; gRPC uses port 6334)."""
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"Qdrant URL must start with http:// or https://, got {url!r}")
        client = QdrantClient(
            url=url, api_key=api_key or None, prefer_grpc=prefer_grpc, timeout=timeout_s
        )
        return cls(client, shards=shards, replicas=replicas, **kwargs)

    # --- plumbing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _call(self, collection: str) -> Iterator[None]:
        """Serialise local mode; turn the client's errors into domain errors."""
        with self._local_lock if self._local else contextlib.nullcontext():
            try:
                yield
            except UnexpectedResponse as exc:
                message = _server_message(exc)
                if exc.status_code == 404:
                    raise NotReady(f"vector collection {collection!r} does not exist: "
                                   f"{message}") from exc
                if exc.status_code in (400, 422):
                    raise InvalidInput(f"vector store rejected the request: {message}") from exc
                raise
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
                if code == grpc.StatusCode.NOT_FOUND:
                    raise NotReady(f"vector collection {collection!r} does not exist: "
                                   f"{details}") from exc
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidInput(f"vector store rejected the request: {details}") from exc
                raise
            except ValueError as exc:
                if not self._local:
                    raise
                if _LOCAL_MISSING.match(str(exc)):
                    raise NotReady(f"vector collection {collection!r} does not exist") from exc
                raise InvalidInput(f"vector store rejected the request: {exc}") from exc

    def _search_params(self) -> models.SearchParams | None:
        if self._local:
            return None
        # Rescoring keeps scores true cosines on int8-quantised collections; the server
        # ignores it on collections without quantisation.
        return models.SearchParams(
            hnsw_ef=self._hnsw_ef,
            quantization=models.QuantizationSearchParams(rescore=True, oversampling=2.0),
        )

    def _scroll(
        self,
        collection: str,
        flt: models.Filter | None,
        with_payload: bool | list[str],
        with_vectors: bool | list[str],
    ) -> Iterator[models.Record]:
        # The client types the next offset as REST or gRPC id; it is only passed back.
        offset: Any = None
        while True:
            with self._call(collection):
                records, offset = self._client.scroll(
                    collection_name=collection,
                    scroll_filter=flt,
                    limit=_PAGE,
                    offset=offset,
                    with_payload=with_payload,
                    with_vectors=with_vectors,
                )
            yield from records
            if offset is None:
                return

    def _ensure_indexes(self, collection: str, present: dict[str, Any]) -> None:
        if self._local:
            return
        for field, kind in PAYLOAD_INDEXES.items():
            if field not in present:
                self._client.create_payload_index(
                    collection_name=collection,
                    field_name=field,
                    field_schema=_index_schema(kind),
                    wait=True,
                )

    # --- VectorStore ---------------------------------------------------------------------

    def ensure_collection(self, spec: CollectionSpec) -> None:
        if not spec.name:
            raise ConfigError("collection name must not be empty")
        if not spec.vectors or any(dim < 1 for dim in spec.vectors.values()):
            raise ConfigError(f"collection {spec.name!r} needs named vectors with dimensions > 0")
        with self._call(spec.name):
            for attempt in range(2):
                if spec.name in self._collection_names():
                    info = self._client.get_collection(spec.name)
                    stored = _vector_dims(info.config.params.vectors)
                    if stored != spec.vectors:
                        raise ConfigError(
                            f"collection {spec.name!r} exists with vectors {stored}, not "
                            f"{spec.vectors}; index into a new collection and switch the alias"
                        )
                    self._ensure_sparse(spec, set(info.config.params.sparse_vectors or {}))
                    self._ensure_indexes(spec.name, info.payload_schema)
                    return
                if spec.name in self._aliases():
                    raise ConfigError(f"{spec.name!r} is an alias, not a collection name")
                try:
                    self._create(spec)
                except (UnexpectedResponse, grpc.RpcError, ValueError):
                    # Another process may have created it meanwhile: check it once more.
                    if attempt or spec.name not in self._collection_names():
                        raise
                    continue
                self._ensure_indexes(spec.name, {})
                return

    @staticmethod
    def _ensure_sparse(spec: CollectionSpec, present: set[str]) -> None:
        """A server collection cannot gain a named vector: building a new one is the way."""
        missing = [name for name in spec.sparse_vectors if name not in present]
        if missing:
            raise ConfigError(
                f"collection {spec.name!r} has no sparse vectors {missing}: run `prodsearch "
                f"reindex` to build a collection that has them and switch over")

    def _vector_names(self, collection: str, wanted: set[str]) -> tuple[dict[str, int],
                                                                       list[str]]:
        """(dense dims, sparse names) of a collection, cached: asked again only when a name
        is not known yet (a sparse vector added since, or a wrong name)."""
        known = self._schemas.get(collection)
        if known is None or wanted - set(known[0]) - set(known[1]):
            with self._call(collection):
                params = self._client.get_collection(collection).config.params
            known = (_vector_dims(params.vectors), sorted(params.sparse_vectors or {}))
            self._schemas[collection] = known
        return known

    def _create(self, spec: CollectionSpec) -> None:
        quantization = (
            models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(
                    type=models.ScalarType.INT8, quantile=0.99, always_ram=True
                )
            )
            if spec.quantize_int8
            else None
        )
        self._client.create_collection(
            collection_name=spec.name,
            vectors_config={
                name: models.VectorParams(size=dim, distance=models.Distance.COSINE)
                for name, dim in spec.vectors.items()
            },
            sparse_vectors_config={
                name: models.SparseVectorParams(modifier=models.Modifier.IDF)
                for name in spec.sparse_vectors
            } or None,
            shard_number=self._shards or spec.shards,
            replication_factor=self._replicas or spec.replicas,
            write_consistency_factor=self._write_consistency,
            hnsw_config=models.HnswConfigDiff(m=spec.hnsw_m, ef_construct=spec.hnsw_ef_construct),
            quantization_config=quantization,
        )

    def upsert(self, collection: str, points: list[VectorPoint]) -> None:
        structs = []
        for p in points:
            vector: dict[str, Any] = {
                name: vector_values(vec, name) for name, vec in p.vectors.items()}
            for name, sparse in p.sparse.items():
                indices, values = sparse_values(sparse, name)
                vector[name] = models.SparseVector(indices=indices, values=values)
            structs.append(models.PointStruct(id=p.id, vector=vector, payload=p.payload.to_dict()))
        for start in range(0, len(structs), _WRITE_BATCH):
            with self._call(collection):
                self._client.upsert(
                    collection_name=collection,
                    points=structs[start : start + _WRITE_BATCH],
                    wait=True,
                    ordering=self._ordering,
                )

    def delete_products(self, collection: str, product_ids: list[str]) -> None:
        for start in range(0, len(product_ids), _PAGE):
            flt = to_server(products_spec(product_ids[start : start + _PAGE]))
            assert flt is not None
            with self._call(collection):
                self._client.delete(
                    collection_name=collection,
                    points_selector=models.FilterSelector(filter=flt),
                    wait=True,
                    ordering=self._ordering,
                )

    def set_payload(self, collection: str, patches: list[PayloadPatch]) -> None:
        operations: list[models.UpdateOperation] = []
        for patch in patches:
            values = patch_values(patch)
            if values:
                operations.append(
                    models.SetPayloadOperation(
                        set_payload=models.SetPayload(
                            payload=values, filter=to_server(products_spec([patch.product_id]))
                        )
                    )
                )
        for start in range(0, len(operations), _WRITE_BATCH):
            with self._call(collection):
                # One request per batch of patches; the server applies it in order.
                self._client.batch_update_points(
                    collection_name=collection,
                    update_operations=operations[start : start + _WRITE_BATCH],
                    wait=True,
                    ordering=self._ordering,
                )

    def search(
        self,
        collection: str,
        vector_name: str,
        vector: np.ndarray,
        filters: Filters,
        limit: int,
        offset: int = 0,
        with_vectors: bool = False,
    ) -> list[ScoredPoint]:
        check_page(limit, offset)
        values = vector_values(vector, vector_name)
        flt = server_filter(filters)
        with self._call(collection):
            response = self._client.query_points(
                collection_name=collection,
                query=values,
                using=vector_name,
                query_filter=flt,
                search_params=self._search_params(),
                limit=limit,
                offset=offset,
                with_payload=True,
                with_vectors=with_vectors,
            )
        return scored_points(response.points, with_vectors)

    def _fused(self, collection: str, prefetches: list[Prefetch], filters: Filters,
               limit: int, offset: int, with_vectors: list[str] | None, fusion: str = "rrf",
               boost: dict[str, tuple[str, ...]] | None = None) -> list[ScoredPoint]:
        """The prefetches fused on the server (see VectorStore.search_fused), one query."""
        check_fusion(fusion, prefetches, boost)
        base = filter_spec(filters)
        flt = to_server(base)
        wanted = {pf.name for pf in prefetches} | set(with_vectors or [])
        dense, sparse = self._vector_names(collection, wanted)
        check_prefetches(prefetches, dense, sparse)
        unknown = set(with_vectors or []) - set(dense)
        if unknown:
            raise InvalidInput(f"unknown vectors {sorted(unknown)}; the collection has "
                               f"{sorted(dense)}")
        params = self._search_params()
        stages = []
        for pf in prefetches:
            query: Any
            if isinstance(pf.vector, SparseVector):
                indices, values = sparse_values(pf.vector, pf.name)
                query = models.SparseVector(indices=indices, values=values)
            else:
                query = vector_values(pf.vector, pf.name)
            stage_filter = flt if pf.any_of is None else to_server(with_any_of(base, pf.any_of))
            stages.append(models.Prefetch(query=query, using=pf.name, filter=stage_filter,
                                          limit=pf.depth, params=params))
        method: Any = (models.FusionQuery(fusion=models.Fusion.DBSF) if fusion == "dbsf"
                       else models.RrfQuery(rrf=models.Rrf(k=RRF_K)))
        using: str | None = None
        if fusion == "none":
            only = stages[0]
            method, using, flt, stages = only.query, only.using, only.filter, []
        elif boost is not None:
            # Fuse every candidate (the union is at most the sum of the depths), then add
            # BOOST to those matching the boost keys.
            matches = to_server(with_any_of(FilterSpec(), boost))
            stages = [models.Prefetch(prefetch=stages, query=method, filter=flt,
                                      limit=sum(pf.depth for pf in prefetches))]
            method = models.FormulaQuery(formula=models.SumExpression(sum=[
                "$score", models.MultExpression(mult=[BOOST, matches])]))
        with self._call(collection):
            response = self._client.query_points(
                collection_name=collection,
                prefetch=stages or None,
                query=method,
                using=using,
                query_filter=flt,
                search_params=params if fusion == "none" else None,
                limit=limit,
                offset=offset,
                with_payload=True,
                with_vectors=list(with_vectors) if with_vectors else False,
            )
        return scored_points(response.points, bool(with_vectors))

    def facets(self, collection: str, query: FacetQuery) -> FacetCounts:
        check_facet_query(query)
        spec = facet_spec(query.filters, query.all_terms, query.product_ids)
        flt = to_server(spec)
        out: FacetCounts = {}
        with self._call(collection):
            for key in query.keys:
                response = self._client.facet(collection_name=collection, key=key,
                                              facet_filter=flt, limit=query.limit, exact=True)
                out[key] = [(str(h.value), int(h.count)) for h in response.hits]
            if query.price_bands:
                out["price"] = []
                for low, high in query.price_bands:
                    band = to_server(FilterSpec(must=[spec, Range("price", gte=low, lt=high)]))
                    n = self._client.count(collection_name=collection, count_filter=band,
                                           exact=True).count
                    out["price"].append((price_band_label(low, high), int(n)))
        return out

    def get_vectors(
        self, collection: str, product_id: str, vector_name: str
    ) -> list[tuple[int, np.ndarray]]:
        out = []
        flt = to_server(products_spec([product_id]))
        for rec in self._scroll(collection, flt, ["position"], [vector_name]):
            vec = rec.vector.get(vector_name) if isinstance(rec.vector, dict) else None
            if vec is not None and rec.payload is not None:
                out.append((int(rec.payload["position"]), np.asarray(vec, dtype=np.float32)))
        return sorted(out, key=lambda item: item[0])

    def count(self, collection: str, filters: Filters | None = None) -> int:
        flt = server_filter(filters)
        with self._call(collection):
            return int(
                self._client.count(collection_name=collection, count_filter=flt, exact=True).count
            )

    def scroll_payloads(self, collection: str) -> list[tuple[str, PointPayload]]:
        return [
            (str(rec.id), PointPayload.from_dict(dict(rec.payload or {})))
            for rec in self._scroll(collection, None, True, False)
        ]

    def product_payloads(self, collection: str, product_ids: list[str],
                         filters: Filters | None = None) -> list[tuple[str, PointPayload]]:
        out: list[tuple[str, PointPayload]] = []
        for start in range(0, len(product_ids), _PAGE):
            flt = to_server(products_spec(product_ids[start : start + _PAGE], filters))
            out += [(str(rec.id), PointPayload.from_dict(dict(rec.payload or {})))
                    for rec in self._scroll(collection, flt, True, False)]
        return out

    def scroll_page(self, collection: str, offset: str | None, limit: int
                    ) -> tuple[list[tuple[str, PointPayload]], str | None]:
        check_page(limit, 0)
        with self._call(collection):
            records, after = self._client.scroll(
                collection_name=collection, limit=limit, offset=offset,
                with_payload=True, with_vectors=False)
        page = [(str(rec.id), PointPayload.from_dict(dict(rec.payload or {})))
                for rec in records]
        return page, None if after is None else str(after)

    def flush(self, collection: str) -> None:
        """Nothing to do: the server acknowledged every write after its write-ahead log."""

    def delete_points(self, collection: str, point_ids: list[str]) -> None:
        for start in range(0, len(point_ids), _PAGE):
            ids: list[models.ExtendedPointId] = list(point_ids[start : start + _PAGE])
            with self._call(collection):
                self._client.delete(
                    collection_name=collection,
                    points_selector=models.PointIdsList(points=ids),
                    wait=True,
                    ordering=self._ordering,
                )

    def index_state(self, collection: str) -> IndexState:
        name = self.resolve(collection)
        with self._call(name):
            info = self._client.get_collection(name)
        return IndexState(int(info.points_count or 0), int(info.indexed_vectors_count or 0))

    def build_index(self, collection: str) -> None:
        """Wait until the server has finished optimising (it indexes in the background)."""
        name = self.resolve(collection)
        deadline = time.monotonic() + self._index_timeout_s
        nudged = False
        while True:
            with self._call(name):
                status = self._client.get_collection(name).status
                if status == models.CollectionStatus.GREEN:
                    return
                if status == models.CollectionStatus.RED:
                    raise NotReady(f"vector collection {name!r} is in a failed state (red)")
                if status == models.CollectionStatus.GREY and not nudged:
                    # Grey: optimisations pending but not started; an empty update starts them.
                    self._client.update_collection(
                        collection_name=name, optimizers_config=models.OptimizersConfigDiff()
                    )
                    nudged = True
            if time.monotonic() > deadline:
                raise NotReady(f"vector collection {name!r} is still being indexed after "
                               f"{self._index_timeout_s:.0f} s")
            time.sleep(0.5)

    def _collection_names(self) -> set[str]:
        # Not collection_exists(): that also answers True for an alias.
        return {c.name for c in self._client.get_collections().collections}

    def _aliases(self) -> dict[str, str]:
        response = self._client.get_aliases()
        return {a.alias_name: a.collection_name for a in response.aliases}

    def set_alias(self, alias: str, collection: str) -> None:
        if not alias:
            raise ConfigError("alias name must not be empty")
        with self._call(collection):
            if alias in self._collection_names():
                raise ConfigError(f"alias {alias!r} would hide the collection of that name")
            operations: list[models.AliasOperations] = []
            if alias in self._aliases():
                operations.append(
                    models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
                )
            operations.append(
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)
                )
            )
            # One request: the server applies delete + create atomically, so no search
            # sees the alias missing.
            self._client.update_collection_aliases(change_aliases_operations=operations)

    def resolve(self, alias_or_name: str) -> str:
        with self._call(alias_or_name):
            return self._aliases().get(alias_or_name, alias_or_name)

    def list_collections(self) -> list[str]:
        with self._call(""):
            return sorted(self._collection_names())

    def drop_collection(self, collection: str) -> None:
        with self._call(collection):
            # The server removes the collection's aliases with it.
            self._client.delete_collection(collection_name=collection)
            self._schemas.clear()

    def close(self) -> None:
        with self._call(""):
            self._client.close()

    def __enter__(self) -> QdrantServerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "local" if self._local else str(self._client.init_options.get("url"))
        return f"QdrantServerStore({where})"
