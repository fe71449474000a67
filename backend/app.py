"""Composition root: settings -> stores, encoder, services. Nothing else builds these."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from sqlalchemy import Engine

from backend.config import Settings
from backend.domain.catalog import CatalogService, ImageBlobStore
from backend.domain.indexing import Indexer, collection_spec
from backend.domain.match import MatchService
from backend.domain.photo_index import PhotoIndex
from backend.domain.ports import VectorEncoder
from backend.domain.reindex import (
    ModelVersionMismatch,
    check_model_version,
    physical_name,
    reindex_on_start,
)
from backend.domain.restock import RestockService
from backend.domain.search import SearchService
from backend.stores.catalog import migrate
from backend.stores.catalog.db import make_engine
from backend.stores.catalog.repository import CatalogRepository
from backend.stores.vectors.base import VectorStore

log = logging.getLogger(__name__)


def open_vector_store(settings: Settings) -> VectorStore:
    if settings.embedded:
        from backend.stores.vectors.edge import EdgeVectorStore

        return EdgeVectorStore(settings.vectors_dir, hnsw_ef=settings.search.hnsw_ef)
    from backend.stores.vectors.server import QdrantServerStore

    return QdrantServerStore.from_url(
        settings.qdrant_url,
        api_key=settings.qdrant_api_key.get_secret_value() or None,
        prefer_grpc=settings.qdrant_prefer_grpc,
        shards=settings.qdrant_shards,
        replicas=settings.qdrant_replicas,
    )


def make_encoder(settings: Settings) -> VectorEncoder:
    """The encoder the search service calls: a remote worker pool or the in-process model."""
    enc = settings.encoder
    if enc.worker_url:
        from backend.transport.grpc.encoder_client import RemoteEncoder

        return RemoteEncoder(enc.worker_url)
    from encoders.model import ProductEncoder
    from encoders.worker import EncoderWorker

    model = ProductEncoder(
        image_model=enc.image_model,
        text_model=enc.text_model,
        device=enc.device,
        threads=enc.threads,
        fusion_checkpoint="" if enc.fusion_checkpoint == "shipped" else enc.fusion_checkpoint,
    )
    if enc.runtime != "torch":
        from encoders.optimized import optimize

        optimize(model, enc.runtime)
    return EncoderWorker(
        model,
        max_batch_size=enc.max_batch_size,
        max_wait_ms=enc.max_wait_ms,
        max_queue=enc.max_queue,
    )


def make_photo_index(settings: Settings) -> PhotoIndex | None:
    """Local features for photo search, or None when they are switched off."""
    search = settings.search
    if not search.local_features:
        return None
    return PhotoIndex.open(settings.features_dir, search.vocabulary_file, search.scorer_file,
                           search.feature_workers)


def prepare_database(settings: Settings) -> None:
    """The embedded SQLite catalog migrates itself; a server database is migrated by
    `prodsearch migrate` (one-shot job at scale) and only checked here."""
    if settings.database_url.get_secret_value():
        migrate.require_head(settings.sql_url)
    else:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        migrate.upgrade(settings.sql_url)


@dataclass
class App:
    settings: Settings
    engine: Engine
    catalog: CatalogRepository
    vectors: VectorStore
    encoder: VectorEncoder
    indexer: Indexer
    search: SearchService
    catalog_service: CatalogService
    match: MatchService
    restock: RestockService
    index_wakeup: threading.Event = field(default_factory=threading.Event)
    photo: PhotoIndex | None = None

    def ensure_collection(self) -> None:
        ensure_collection(self.vectors, self.settings, self.encoder)

    def close(self) -> None:
        if self.photo is not None:
            self.photo.close()
        self.vectors.close()
        self.engine.dispose()


def ensure_collection(vectors: VectorStore, settings: Settings, encoder: VectorEncoder) -> None:
    """Create the collection for the current model version and point the alias at it if
    nothing is there yet (a later model version switches over through `reindex`)."""
    name = settings.collection
    if name in vectors.list_collections():
        return
    # Raises ModelVersionMismatch when the alias points at another model's collection.
    current = check_model_version(vectors, name, encoder.model_version)
    if current is not None:
        # Adds what a newer spec has (the visual words) in place where the store can; a
        # server collection without them asks for a reindex (ConfigError).
        vectors.ensure_collection(collection_spec(
            current, encoder, settings.qdrant_shards, settings.qdrant_replicas))
        return
    physical = physical_name(name, encoder.model_version)
    vectors.ensure_collection(
        collection_spec(physical, encoder, settings.qdrant_shards, settings.qdrant_replicas)
    )
    vectors.set_alias(name, physical)


def build_app(settings: Settings, encoder: VectorEncoder | None = None,
              auto_reindex: bool | None = None) -> App:
    """`auto_reindex` (default: for the embedded store) rebuilds the vector collection when
    it was made by another model version; otherwise that refuses to start."""
    from backend import metrics

    prepare_database(settings)
    engine = make_engine(settings.sql_url)
    catalog = CatalogRepository(engine)
    vectors = metrics.instrument_vector_store(open_vector_store(settings))
    encoder = encoder or make_encoder(settings)
    metrics.instrument_encoder(encoder)
    metrics.watch_outbox(catalog)
    wakeup = threading.Event()
    photo = make_photo_index(settings)
    app = App(
        settings=settings,
        engine=engine,
        catalog=catalog,
        vectors=vectors,
        encoder=encoder,
        indexer=Indexer(
            catalog, vectors, encoder, settings.collection, settings.search.max_image_pixels,
            photo=photo,
        ),
        search=SearchService(catalog, vectors, encoder, settings.collection, settings.search,
                             photo=photo),
        catalog_service=CatalogService(
            catalog,
            vectors,
            settings.collection,
            ImageBlobStore(settings.data_dir / "images"),
            settings.search.max_image_bytes,
            settings.search.max_image_pixels,
            on_write=wakeup,
        ),
        match=MatchService(catalog, vectors, encoder, settings.collection, settings.search,
                           settings.data_dir),
        restock=RestockService(catalog, vectors, encoder, settings.collection, settings.search,
                               photo=photo),
        index_wakeup=wakeup,
        photo=photo,
    )
    try:
        app.ensure_collection()
    except ModelVersionMismatch:
        if not (settings.embedded if auto_reindex is None else auto_reindex):
            app.close()
            raise
        reindex_on_start(catalog, engine, vectors, encoder, settings.collection,
                         shards=settings.qdrant_shards, replicas=settings.qdrant_replicas,
                         batch=settings.indexer_batch,
                         max_image_pixels=settings.search.max_image_pixels, photo=photo)
    return app
