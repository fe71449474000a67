"""One typed settings object, read from PRODSEARCH_* environment variables (nested keys use
double underscores, e.g. PRODSEARCH_SEARCH__MAX_TOP_K) and an optional TOML file named by
PRODSEARCH_CONFIG_FILE. Built once by `load_settings()`; unsafe values are refused at start."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    PlainSerializer,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from backend.errors import ConfigError
from encoders.checkpoints import FusionCheckpoint

# The fusion setting, parsed once here: "none", "shipped" (or "") or a checkpoint path. An
# environment value is a plain string (NoDecode: not JSON, although the type is structured).
FusionSetting = Annotated[
    FusionCheckpoint,
    NoDecode,
    BeforeValidator(FusionCheckpoint.parse),
    PlainSerializer(str, return_type=str),
]


class EncoderSettings(BaseModel):
    # "efficientnet_lite0" (ImageNet weights) or "efficientnet_lite0_photo" (its last blocks
    # trained for photos: encoders/checkpoints/photo-cnn.pt; README "CNN trained for photos").
    image_model: Literal["efficientnet_lite0", "efficientnet_lite0_photo"] = "efficientnet_lite0"
    # "multilingual" (USE multilingual v3: Chinese + English) or "minilm" (English only);
    # "lstm" needs a fusion checkpoint trained with it: "shipped" (fusion-lstm.pt) or a path
    # from `prodsearch train --text-model lstm`.
    text_model: Literal["multilingual", "minilm", "lstm"] = "multilingual"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_batch_size: int = Field(32, ge=1, le=1024)
    # Only for queries that arrive while a batch runs: a lone query never waits.
    max_wait_ms: float = Field(5.0, ge=0, le=1000)
    max_queue: int = Field(256, ge=1)
    # Threads for bulk batches (texts: 64 or more; encoders/threads.py), 0 = the CPUs (text:
    # at most 4); query-sized text batches run on one thread whatever this says.
    threads: int = Field(0, ge=0)
    # "none" (default): image and text vectors only; "shipped" (or ""): the fusion checkpoint
    # shipped in encoders/checkpoints; or a checkpoint path. Off by default because the
    # shipped model loses to the pretrained vectors on product photos and on text (README,
    # "Model quality") and its image path cannot use the ONNX runtime.
    fusion_checkpoint: FusionSetting = FusionCheckpoint.NONE
    worker_url: str = ""  # host:port of a remote encoder worker; empty = encode in-process
    # CPU models: "onnx" (ONNX Runtime, several times faster; vectors agree with torch to
    # cosine >= 0.9999) or "torch" (eager PyTorch, the reference). GPUs always run torch fp16.
    runtime: Literal["torch", "onnx"] = "onnx"
    worker_port: int = Field(50061, ge=0, le=65535)  # `prodsearch worker` listens here


class SearchSettings(BaseModel):
    default_top_k: int = Field(10, ge=1)
    max_top_k: int = Field(100, ge=1, le=1000)
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    # Query photos (search, match, restock) decode to at most this many pixels: a JPEG above
    # it is decoded at a smaller DCT scale; any other format is refused from its header size
    # before decoding (a few KB of PNG can declare tens of megapixels, seconds of CPU).
    max_decode_pixels: int = Field(16_777_216, ge=1)
    max_text_chars: int = Field(1000, ge=1)
    # page offset + top_k may not exceed these (INVALID_ARGUMENT beyond): deep pages are
    # ranked from the top, so they bound the work of one request. Diversified results
    # (MMR, O(k * candidates)) are bounded more tightly.
    max_result_window: int = Field(1000, ge=1, le=10_000)
    max_diversify_window: int = Field(300, ge=1, le=10_000)
    hnsw_ef: int = Field(128, ge=8)
    # Products kept in memory to answer searches, checked against the catalog by version
    # on every request (backend/domain/hydration.py); 0 reads every hit from SQL in full.
    product_cache_size: int = Field(10_000, ge=0)
    # How old the in-memory indexed version may be (ms); 0 reads it on every request.
    indexed_version_ttl_ms: float = Field(100.0, ge=0, le=60_000)
    # Threads for a search's blocking calls (SQL, vector store): sized for many concurrent
    # requests, separate from asyncio's small default pool.
    io_threads: int = Field(16, ge=1, le=256)
    # Query photos that are JPEGs are decoded at a reduced scale (JPEG draft mode, a power
    # of 2) keeping both sides >= this many pixels; 0 decodes at full size.
    query_image_draft_px: int = Field(448, ge=0)
    # Local features (OpenCV keypoints + descriptors) of every catalog image: a vote of the
    # photo's descriptors finds candidates, geometric verification boxes the product in the
    # photo. Off: photo search and restock use the dense image vectors alone.
    local_features: bool = True
    # Most voted candidate images verified geometrically per photo query (a RANSAC fit over
    # each one's vote correspondences, no matching pass).
    verify_top: int = Field(20, ge=1, le=500)
    feature_workers: int = Field(2, ge=1, le=64)  # threads extracting and verifying
    # Shipped vocabulary / scorer (encoders/checkpoints; the scorer fitted with the
    # configured image model) unless a file is given.
    vocabulary_file: str = ""
    scorer_file: str = ""
    # Text queries search the lexical vector beside the dense one (false: the dense text
    # vector alone, as before hybrid search; explain then has no parts).
    text_lexical: bool = True
    # Text queries: the dense text vector and the lexical one (BM25 terms) fused in the
    # store: "rrf" (reciprocal ranks) or "dbsf" (scores normalised per list, then summed).
    # Chosen on the seed-1 text evaluation (its own queries, not the reported seed-0 run):
    # with the bilingual lexicon and the English rendering of Chinese queries, RRF keeps
    # Chinese and English results together (zh/en top-10 overlap 0.84 / 0.81 against 0.83
    # / 0.77); README "Model quality" has both measured. A hit's score under RRF is a rank
    # score; explain gives its dense cosine and lexical score.
    text_fusion: Literal["rrf", "dbsf"] = "rrf"
    # Each list of a text query is this deep (at least the page's size).
    text_depth: int = Field(200, ge=10, le=10_000)
    # Facets count the products that pass the filters and either match every term of the
    # query lexically or are among its first `facet_top_n` hits.
    facet_top_n: int = Field(100, ge=1, le=1000)
    # Price facet bands: [0, 10), [10, 25), ..., [500, inf).
    facet_price_bands: list[float] = Field(default_factory=lambda: [0.0, 10.0, 25.0, 50.0,
                                                                    100.0, 250.0, 500.0])


class LimitsSettings(BaseModel):
    # Expensive calls (photo searches, diversified searches, match, restock) run at
    # most this many at a time (0: half the CPU cores, at least 1); up to `heavy_queue` more
    # wait for a slot within their deadline, any further one gets RESOURCE_EXHAUSTED at once.
    # Health checks and cheap calls (text search, reads, stock updates) are never queued.
    heavy_concurrency: int = Field(0, ge=0, le=1024)
    heavy_queue: int = Field(8, ge=0, le=100_000)
    # Nice value (Linux, per thread) of the threads doing heavy work: photo decoding, region
    # proposals and photo encoding (also the indexer's). 0 = same priority as the rest.
    heavy_nice: int = Field(10, ge=0, le=19)


class ImageSettings(BaseModel):
    # Folders that server-side image paths (images[].uri in an admin upsert, lines of
    # `prodsearch ingest`) may point into, after symlinks are resolved. Uploaded images'
    # own folder is always allowed; ingest also allows the catalog file's folder.
    roots: list[Path] = []
    # Largest image file read from a server-side path (uploads: search.max_image_bytes).
    max_file_bytes: int = Field(32 * 1024 * 1024, ge=1024)

    @field_validator("roots")
    @classmethod
    def _absolute(cls, roots: list[Path]) -> list[Path]:
        for root in roots:
            if not root.is_absolute():
                raise ValueError(f"images.roots: {str(root)!r} is not an absolute path")
        return roots


class AuthSettings(BaseModel):
    # API keys are required unless this is set to false explicitly (the embedded demo does;
    # the server then logs a warning). Health and reflection are always open.
    enabled: bool = True
    # Seconds a verified key is remembered; a revoked key stops working within this time.
    cache_ttl_s: float = Field(5.0, ge=0, le=300)


class TlsSettings(BaseModel):
    # PEM files. cert_file + key_file turn TLS on; client_ca_file also requires every client
    # to present a certificate signed by that CA (mutual TLS).
    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    @model_validator(mode="after")
    def _complete(self) -> TlsSettings:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("tls.cert_file and tls.key_file must be given together")
        if self.client_ca_file and not self.cert_file:
            raise ValueError("tls.client_ca_file (mutual TLS) needs tls.cert_file and key_file")
        for name in ("cert_file", "key_file", "client_ca_file"):
            value = getattr(self, name)
            if value and not Path(value).is_file():
                raise ValueError(f"tls.{name}: no such file {value!r}")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PRODSEARCH_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    data_dir: Path = Path("data")
    # Empty: SQLite file in data_dir. Postgres: postgresql+psycopg://user:pass@host/db
    database_url: SecretStr = SecretStr("")
    # Empty: embedded qdrant-edge shard in data_dir. Else a Qdrant server, e.g. http://qdrant:6334
    qdrant_url: str = ""
    qdrant_api_key: SecretStr = SecretStr("")
    qdrant_prefer_grpc: bool = True
    qdrant_shards: int = Field(1, ge=1)
    qdrant_replicas: int = Field(1, ge=1)
    collection: str = "products"
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(50051, ge=0, le=65535)
    shutdown_grace_s: float = Field(5.0, ge=0)
    indexer_poll_ms: int = Field(200, ge=10)
    indexer_batch: int = Field(64, ge=1)
    # The outbox has one drainer: with several `serve` replicas, set this false on all but one.
    indexer_enabled: bool = True
    # Health turns NOT_SERVING (the server's "" status and the Catalog service) when the
    # indexer has indexed nothing for this many seconds while changes wait (a pass that
    # fails, hangs or cannot verify its writes), or its loop has died; SERVING again once
    # it makes progress.
    indexer_stall_s: float = Field(120.0, ge=1)
    # The vector index is (re)built in the background once this many points have been
    # written through the indexer and writes pause for `index_build_quiet_s` (or have gone
    # on for `index_build_max_delay_s`); 0 = never (backend/domain/index_maintainer.py).
    # On the embedded store the build runs in a child process on a copy of the shard,
    # which is then switched to (backend/stores/vectors/edge.py); searches go on meanwhile.
    index_build_min_writes: int = Field(1000, ge=0)
    index_build_quiet_s: float = Field(2.0, ge=0)
    index_build_max_delay_s: float = Field(60.0, ge=0)
    # The embedded store's build process is killed after this long and the build counted
    # as failed; the collection keeps serving from its live shard.
    index_build_timeout_s: float = Field(3600.0, gt=0)
    # The embedded store keeps the updates made during a build in memory, to apply them to
    # the built copy; past this many MB the build is given up (counted in the metrics) and
    # retried once writes slow down.
    index_build_max_recorded_mb: int = Field(256, ge=0)
    # The embedded store is flushed to disk at most this often, before outbox rows are
    # marked done (a killed process loses nothing anyway; this bounds what a lost machine
    # can take back, which the self-check then repairs). 0 = never flush explicitly.
    indexer_flush_interval_s: float = Field(30.0, ge=0)
    # The self-check walks the catalog and the vector store in slices of this many products
    # (and as many points), one slice every `selfcheck_interval_s` seconds while the outbox
    # is empty, repairing missing, stale, orphaned and drifted points. 0 = off.
    selfcheck_interval_s: float = Field(10.0, ge=0)
    selfcheck_batch: int = Field(200, ge=1, le=10_000)
    log_level: str = "INFO"
    # "text" (one line per record) or "json" (one JSON object per line, with request_id).
    log_format: Literal["text", "json"] = "text"
    # Prometheus metrics over HTTP on this port (0 = off), bound to metrics_host.
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    encoder: EncoderSettings = EncoderSettings()
    search: SearchSettings = SearchSettings()
    limits: LimitsSettings = LimitsSettings()
    images: ImageSettings = ImageSettings()
    auth: AuthSettings = AuthSettings()
    tls: TlsSettings = TlsSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("PRODSEARCH_CONFIG_FILE")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"unknown log level {value!r}")
        return value

    @model_validator(mode="after")
    def _safe(self) -> Settings:
        if self.search.default_top_k > self.search.max_top_k:
            raise ValueError("search.default_top_k must not exceed search.max_top_k")
        if self.search.max_top_k > min(self.search.max_result_window,
                                       self.search.max_diversify_window):
            raise ValueError("search.max_top_k must not exceed search.max_result_window "
                             "or search.max_diversify_window")
        url = self.database_url.get_secret_value()
        if url and not url.startswith(("sqlite", "postgresql")):
            raise ValueError("database_url must be a sqlite:// or postgresql:// URL")
        return self

    @cached_property
    def sql_url(self) -> str:
        """The SQLAlchemy URL (secret: never log it)."""
        url = self.database_url.get_secret_value()
        return url or f"sqlite:///{(self.data_dir / 'catalog.sqlite3').resolve()}"

    @property
    def vectors_dir(self) -> Path:
        return self.data_dir / "vectors"

    @property
    def features_dir(self) -> Path:
        return self.data_dir / "features"

    @property
    def embedded(self) -> bool:
        return not self.qdrant_url


def load_settings(**overrides: object) -> Settings:
    """Build the settings once at start-up; turn validation errors into one clear ConfigError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc
