"""Composition root: settings -> stores, encoder, services. Nothing else builds these."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from backend.config import Settings
from backend.domain.catalog import CatalogService, ImageBlobStore
from backend.domain.index_maintainer import IndexMaintainer
from backend.domain.indexing import Indexer, collection_spec
from backend.domain.match import MatchService
from backend.domain.match_calibration import MatchCalibrator
from backend.domain.photo_index import PhotoIndex
from backend.domain.ports import VectorEncoder
from backend.domain.reindex import (
    ModelVersionMismatch,
    Reindexer,
    check_model_version,
    physical_name,
    reindex_on_start,
)
from backend.domain.restock import RestockService
from backend.domain.search import SearchService
from backend.domain.selfcheck import SelfCheck
from backend.security.paths import ImagePathPolicy
from backend.stores.catalog import migrate
from backend.stores.catalog.db import make_engine
from backend.stores.catalog.repository import CatalogRepository
from backend.stores.features import FeatureStore
from backend.stores.vectors.base import VectorStore

if TYPE_CHECKING:
    from encoders.worker import EncoderWorker

log = logging.getLogger(__name__)


def open_vector_store(settings: Settings) -> VectorStore:
    if settings.embedded:
        from backend.stores.vectors.edge import EdgeVectorStore

        return EdgeVectorStore(settings.vectors_dir, hnsw_ef=settings.search.hnsw_ef,
                               build_timeout_s=settings.index_build_timeout_s,
                               build_journal_max_bytes=settings.index_build_max_recorded_mb << 20)
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
    from encoders.priority import set_heavy_nice

    set_heavy_nice(settings.limits.heavy_nice)  # before any model loads or heavy call
    enc = settings.encoder
    if enc.worker_url:
        from backend.transport.grpc.encoder_client import RemoteEncoder

        return RemoteEncoder(enc.worker_url)
    return make_local_encoder(settings)


def make_local_encoder(settings: Settings) -> EncoderWorker:
    """The models in this process behind the dynamic batcher, whatever `worker_url` says
    (`prodsearch worker` IS the worker)."""
    from encoders.model import ProductEncoder
    from encoders.worker import EncoderWorker

    enc = settings.encoder
    model = ProductEncoder(
        image_model=enc.image_model,
        text_model=enc.text_model,
        device=enc.device,
        threads=enc.threads,
        fusion_checkpoint=enc.fusion_checkpoint,
        runtime=enc.runtime,
    )
    return EncoderWorker(
        model,
        max_batch_size=enc.max_batch_size,
        max_wait_ms=enc.max_wait_ms,
        max_queue=enc.max_queue,
    )


def baseline_encoder(settings: Settings, current: str) -> VectorEncoder | None:
    """An in-process encoder of the model version that built the physical collection
    `current` (the alias's target), for reindex's recall comparison: the configured text model
    without the fused vector (the collection before the fusion model shipped), or another
    text model with or without it, or any of these with the other image network. None when
    no configuration matches."""
    from backend.domain.reindex import baseline_encoder_for
    from encoders.checkpoints import FusionCheckpoint

    def make(overrides: dict[str, object]) -> VectorEncoder:
        enc = settings.encoder.model_copy(update={"worker_url": "", **overrides})
        return make_encoder(settings.model_copy(update={"encoder": enc}))

    others = [m for m in ("multilingual", "minilm") if m != settings.encoder.text_model]
    no_fusion: dict[str, object] = {"fusion_checkpoint": FusionCheckpoint.NONE}
    candidates: list[dict[str, object]] = [no_fusion]
    candidates += [{"text_model": m, **no_fusion} for m in others]
    candidates += [{"text_model": m} for m in others]
    # The other image network (pretrained <-> trained for photos): a collection built before
    # the configured CNN changed.
    images = [m for m in ("efficientnet_lite0", "efficientnet_lite0_photo")
              if m != settings.encoder.image_model]
    candidates += [{"image_model": m, **c} for m in images for c in [{}, *candidates]]
    return baseline_encoder_for(current, settings.collection, make, candidates)


def migrate_database(settings: Settings, revision: str = "head", downgrade: bool = False
                     ) -> str | None:
    """`alembic upgrade` (or downgrade) to `revision`; returns the revision the database is
    at. The SQLite catalog's folder is created first."""
    if not settings.database_url.get_secret_value():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    if downgrade:
        migrate.downgrade(settings.sql_url, revision)
    else:
        migrate.upgrade(settings.sql_url, revision)
    return migrate.current_revision(settings.sql_url)


def make_photo_index(settings: Settings) -> PhotoIndex | None:
    """Local features for photo search, or None when they are switched off."""
    search = settings.search
    if not search.local_features:
        return None
    from encoders.local_features import scorer_file

    # The shipped scorer weighs the configured CNN's cosines unless a file is given.
    scorer = search.scorer_file or str(scorer_file(settings.encoder.image_model))
    return PhotoIndex.open(FeatureStore(settings.features_dir), search.vocabulary_file,
                           scorer, search.feature_workers)


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
    # Run by the server's indexer loop between drains (None: no self-check).
    self_check: SelfCheck | None = None
    photo: PhotoIndex | None = None

    @cached_property
    def calibrator(self) -> MatchCalibrator:
        """Fits and refreshes the match calibration (`prodsearch calibrate`)."""
        return make_calibrator(self.settings, self.catalog, self.match, self.encoder)

    def dense_match(self) -> MatchService:
        """Matching on the dense image vectors alone (no local features): the baseline
        `prodsearch eval --task match` compares with."""
        s = self.settings
        return MatchService(self.catalog, self.vectors, self.encoder, s.collection, s.search,
                            s.data_dir)

    def ensure_collection(self) -> None:
        ensure_collection(self.vectors, self.settings, self.encoder)

    def close(self) -> None:
        self.search.close()
        if self.indexer.maintainer is not None:
            self.indexer.maintainer.close()
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


def make_calibrator(settings: Settings, catalog: CatalogRepository, match: MatchService,
                    encoder: VectorEncoder) -> MatchCalibrator:
    return MatchCalibrator(catalog, match, encoder, settings.data_dir,
                           max_image_pixels=settings.search.max_image_pixels,
                           max_image_bytes=settings.images.max_file_bytes)


class AppParts:
    """The app's parts, each built from the settings on first use, at most once. `build_app`
    takes them all; a command that does not serve takes only those it uses, so that `keys`
    or `eval --task match` never open the vector store a running server owns, and `ingest`
    writes the catalog before it tries to. `close()` closes what was opened."""

    def __init__(self, settings: Settings, encoder: VectorEncoder | None = None) -> None:
        self.settings = settings
        self._given_encoder = encoder

    @cached_property
    def engine(self) -> Engine:
        prepare_database(self.settings)
        return make_engine(self.settings.sql_url)

    @cached_property
    def catalog(self) -> CatalogRepository:
        return CatalogRepository(self.engine)

    @cached_property
    def vectors(self) -> VectorStore:
        """Raises StoreBusy while another process owns the embedded store."""
        from backend import metrics

        store: VectorStore = metrics.instrument_vector_store(open_vector_store(self.settings))
        return store

    @cached_property
    def encoder(self) -> VectorEncoder:
        """Not started: `start()` loads the models (seconds), only where they are needed."""
        from backend import metrics

        encoder = self._given_encoder or make_encoder(self.settings)
        metrics.instrument_encoder(encoder)
        return encoder

    @cached_property
    def indexer(self) -> Indexer:
        return Indexer(self.catalog, self.vectors, self.encoder, self.settings.collection,
                       self.settings.search.max_image_pixels,
                       flush_interval_s=self.settings.indexer_flush_interval_s,
                       photo=self.photo, maintainer=self.index_maintainer)

    @cached_property
    def index_maintainer(self) -> IndexMaintainer | None:
        s = self.settings
        if not s.index_build_min_writes:
            return None
        return IndexMaintainer(self.vectors, s.collection, min_writes=s.index_build_min_writes,
                               quiet_s=s.index_build_quiet_s,
                               max_delay_s=s.index_build_max_delay_s)

    @cached_property
    def photo(self) -> PhotoIndex | None:
        return make_photo_index(self.settings)

    @cached_property
    def reindexer(self) -> Reindexer:
        s = self.settings
        return Reindexer(self.catalog, self.vectors, self.encoder, s.collection,
                         shards=s.qdrant_shards, replicas=s.qdrant_replicas,
                         batch=s.indexer_batch, max_image_pixels=s.search.max_image_pixels,
                         photo=self.photo)

    @cached_property
    def calibrator(self) -> MatchCalibrator:
        """For ingest and reindex, which refresh a stale match calibration."""
        s = self.settings
        match = MatchService(self.catalog, self.vectors, self.encoder, s.collection, s.search,
                             s.data_dir, photo=self.photo)
        return make_calibrator(s, self.catalog, match, self.encoder)

    def ensure_collection(self) -> None:
        ensure_collection(self.vectors, self.settings, self.encoder)

    def close(self) -> None:
        maintainer = self.__dict__.get("index_maintainer")
        if maintainer is not None:
            maintainer.close()
        if "vectors" in self.__dict__:
            self.vectors.close()
        if "engine" in self.__dict__:
            self.engine.dispose()

    def __enter__(self) -> AppParts:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def build_app(settings: Settings, encoder: VectorEncoder | None = None,
              auto_reindex: bool | None = None) -> App:
    """`auto_reindex` (default: for the embedded store) rebuilds the vector collection when
    it was made by another model version; otherwise that refuses to start."""
    from backend import metrics

    parts = AppParts(settings, encoder)
    engine, catalog, vectors = parts.engine, parts.catalog, parts.vectors
    encoder = parts.encoder
    metrics.watch_outbox(catalog)
    metrics.watch_vector_index(vectors, settings.collection, parts.index_maintainer)
    wakeup = threading.Event()
    photo = parts.photo
    app = App(
        settings=settings,
        engine=engine,
        catalog=catalog,
        vectors=vectors,
        encoder=encoder,
        indexer=parts.indexer,
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
            image_paths=ImagePathPolicy(settings.images.roots, settings.images.max_file_bytes),
        ),
        match=MatchService(catalog, vectors, encoder, settings.collection, settings.search,
                           settings.data_dir, photo=photo),
        restock=RestockService(catalog, vectors, encoder, settings.collection, settings.search,
                               photo=photo),
        index_wakeup=wakeup,
        self_check=SelfCheck(catalog, vectors, parts.indexer, settings.collection,
                             encoder.model_version, settings.selfcheck_batch),
        photo=photo,
    )
    try:
        app.ensure_collection()
    except ModelVersionMismatch:
        if not (settings.embedded if auto_reindex is None else auto_reindex):
            app.close()
            raise
        reindex_on_start(catalog, vectors, encoder, settings.collection,
                         shards=settings.qdrant_shards, replicas=settings.qdrant_replicas,
                         batch=settings.indexer_batch,
                         max_image_pixels=settings.search.max_image_pixels, photo=photo)
    return app
