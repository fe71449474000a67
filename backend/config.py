"""One typed settings object, read from PRODSEARCH_* environment variables (nested keys use
double underscores, e.g. PRODSEARCH_SEARCH__MAX_TOP_K) and an optional TOML file named by
PRODSEARCH_CONFIG_FILE. Built once by `load_settings()`; unsafe values are refused at start."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from backend.errors import ConfigError


class EncoderSettings(BaseModel):
    image_model: Literal["efficientnet_lite0"] = "efficientnet_lite0"
    # "multilingual" (USE multilingual v3: Chinese + English) or "minilm" (English only);
    # "lstm" needs a fusion checkpoint trained with it: "shipped" (fusion-lstm.pt) or a path
    # from `prodsearch train --text-model lstm`.
    text_model: Literal["multilingual", "minilm", "lstm"] = "multilingual"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_batch_size: int = Field(32, ge=1, le=1024)
    max_wait_ms: float = Field(5.0, ge=0, le=1000)
    max_queue: int = Field(256, ge=1)
    threads: int = Field(0, ge=0)  # torch intra-op threads, 0 = library default
    # "none" (default): image and text vectors only; "shipped": the fusion checkpoint shipped
    # in encoders/checkpoints; or a checkpoint path. Off by default because the shipped model
    # loses to the pretrained vectors on product photos and on text (README, "Model quality")
    # and its image path cannot use the ONNX runtime.
    fusion_checkpoint: str = "none"
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
    max_text_chars: int = Field(1000, ge=1)
    hnsw_ef: int = Field(128, ge=8)
    # Query photos that are JPEGs are decoded at a reduced scale (JPEG draft mode, a power
    # of 2) keeping both sides >= this many pixels; 0 decodes at full size.
    query_image_draft_px: int = Field(448, ge=0)
    # Local features (OpenCV keypoints + descriptors) of every catalog image: visual words
    # find candidates, geometric verification ranks them and boxes the product in the photo.
    # Off: photo search and restock use the dense image vectors alone.
    local_features: bool = True
    # Candidate images verified geometrically per photo query (each costs descriptor matching
    # and a RANSAC fit): the first `verify_first`, then up to `verify_top` only when none of
    # those passed the scorer's verified threshold.
    verify_first: int = Field(8, ge=1, le=500)
    verify_top: int = Field(24, ge=1, le=500)
    feature_workers: int = Field(2, ge=1, le=64)  # threads extracting and verifying
    # Shipped vocabulary / scorer (encoders/checkpoints) unless a file is given.
    vocabulary_file: str = ""
    scorer_file: str = ""


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
    log_level: str = "INFO"
    # "text" (one line per record) or "json" (one JSON object per line, with request_id).
    log_format: Literal["text", "json"] = "text"
    # Prometheus metrics over HTTP on this port (0 = off), bound to metrics_host.
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    encoder: EncoderSettings = EncoderSettings()
    search: SearchSettings = SearchSettings()
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
