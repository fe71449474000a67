"""The compose file and the Dockerfile, checked without a Docker engine: services, health
checks, start order, the GPU reservation, and every PRODSEARCH_* variable mapped to a real
field of the settings object (walking the pydantic model, nested keys with `__`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from backend.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def settings_field(env_name: str) -> tuple[type[BaseModel], str] | None:
    """The (model, field) an env variable sets, or None if it sets nothing."""
    prefix = Settings.model_config.get("env_prefix", "")
    delimiter = Settings.model_config.get("env_nested_delimiter", "__")
    assert prefix and delimiter
    if not env_name.startswith(prefix):
        return None
    model: type[BaseModel] = Settings
    parts = env_name[len(prefix):].lower().split(delimiter)
    for n, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return None
        if n == len(parts) - 1:
            return model, part
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return None


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_the_settings_walk_finds_nested_fields() -> None:
    assert settings_field("PRODSEARCH_QDRANT_URL") == (Settings, "qdrant_url")
    found = settings_field("PRODSEARCH_ENCODER__MAX_BATCH_SIZE")
    assert found is not None and found[1] == "max_batch_size"
    assert settings_field("PRODSEARCH_ENCODER__NOPE") is None
    assert settings_field("PRODSEARCH_QDRANT_URLS") is None
    assert settings_field("PRODSEARCH_DATA_DIR__X") is None


def test_services_and_images(compose: dict[str, Any]) -> None:
    svc = services(compose)
    assert {"postgres", "qdrant-1", "qdrant-2", "qdrant-3", "migrate", "worker",
            "worker-cpu", "serve-1", "serve-2"} <= set(svc)
    # Qdrant server release matching the pinned qdrant-client (1.20.0): same major.minor.
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    client = re.search(r'"qdrant-client==(\d+)\.(\d+)\.\d+"', pyproject)
    assert client is not None
    for name in ("qdrant-1", "qdrant-2", "qdrant-3"):
        image = svc[name]["image"]
        assert re.fullmatch(rf"qdrant/qdrant:v{client[1]}\.{client[2]}\.\d+", image), image
    assert svc["postgres"]["image"].startswith("postgres:")
    for name in ("migrate", "worker", "worker-cpu", "serve-1", "serve-2"):
        assert svc[name]["image"].startswith("prodsearch:") and svc[name]["build"] == "."


def test_qdrant_runs_as_a_three_node_cluster(compose: dict[str, Any]) -> None:
    svc = services(compose)
    for name in ("qdrant-1", "qdrant-2", "qdrant-3"):
        assert env_of(svc[name])["QDRANT__CLUSTER__ENABLED"] == "true"
        assert svc[name]["volumes"], f"{name} keeps its storage in a volume"
        assert f"http://{name}:6335" in svc[name]["command"]
    for name in ("qdrant-2", "qdrant-3"):
        command = svc[name]["command"]
        assert command[command.index("--bootstrap") + 1] == "http://qdrant-1:6335"
    serve = env_of(svc["serve-1"])
    assert int(serve["PRODSEARCH_QDRANT_SHARDS"]) >= 3
    assert int(serve["PRODSEARCH_QDRANT_REPLICAS"]) >= 2


def test_every_long_running_service_has_a_health_check(compose: dict[str, Any]) -> None:
    svc = services(compose)
    for name, service in svc.items():
        if name == "migrate":
            assert service["restart"] == "no"  # one-shot
            continue
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL")
    assert "pg_isready" in " ".join(svc["postgres"]["healthcheck"]["test"])
    assert "/readyz" in " ".join(svc["qdrant-1"]["healthcheck"]["test"])
    assert svc["serve-1"]["healthcheck"]["test"][-1] == env_of(svc["serve-1"])[
        "PRODSEARCH_GRPC_PORT"]


def test_start_order(compose: dict[str, Any]) -> None:
    svc = services(compose)
    assert svc["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("serve-1", "serve-2"):
        deps = svc[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        for peer in ("qdrant-1", "qdrant-2", "qdrant-3"):
            assert deps[peer]["condition"] == "service_healthy"
        # Exactly one worker variant runs (profile gpu or cpu): both optional, both healthy.
        for worker in ("worker", "worker-cpu"):
            assert deps[worker] == {"condition": "service_healthy", "required": False}
    for name, service in svc.items():
        for dep in service.get("depends_on", {}):
            assert dep in svc, f"{name} depends on unknown service {dep}"


def test_gpu_reservation_and_cpu_profile(compose: dict[str, Any]) -> None:
    svc = services(compose)
    gpu = svc["worker"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert env_of(gpu)["PRODSEARCH_ENCODER__DEVICE"].startswith("cuda")
    cpu = svc["worker-cpu"]
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu
    assert env_of(cpu)["PRODSEARCH_ENCODER__DEVICE"] == "cpu"
    for worker in (gpu, cpu):
        assert worker["command"][0] == "worker"
        assert "encoder" in worker["networks"]["default"]["aliases"]
    port = env_of(gpu)["PRODSEARCH_ENCODER__WORKER_PORT"]
    for name in ("serve-1", "serve-2"):
        assert env_of(svc[name])["PRODSEARCH_ENCODER__WORKER_URL"] == f"encoder:{port}"


def test_two_search_replicas_one_indexer(compose: dict[str, Any]) -> None:
    svc = services(compose)
    replicas = [svc["serve-1"], svc["serve-2"]]
    assert all(s["command"] == ["serve"] for s in replicas)
    flags = [env_of(s)["PRODSEARCH_INDEXER_ENABLED"] for s in replicas]
    assert sorted(flags) == ["false", "true"]
    host_ports = {p.split(":")[-2] for s in replicas for p in s["ports"]}
    assert len(host_ports) == 4, "each replica publishes its own gRPC and metrics port"
    for s in replicas:
        env = env_of(s)
        assert env["PRODSEARCH_GRPC_HOST"] == "0.0.0.0"
        assert int(env["PRODSEARCH_METRICS_PORT"]) > 0


def test_replicas_share_uploads_and_feature_files(compose: dict[str, Any]) -> None:
    # serve-1 indexes (writes uploads and local-feature files); serve-2 must read the same
    # files where the settings look for them: PRODSEARCH_DATA_DIR (/data) / images, features.
    svc = services(compose)
    settings = load_settings(data_dir=Path("/data"))
    wanted = {f"uploads:{settings.data_dir / 'images'}", f"features:{settings.features_dir}"}
    for name in ("serve-1", "serve-2"):
        assert wanted <= set(svc[name]["volumes"]), name
    assert {"uploads", "features"} <= set(compose["volumes"])


def test_every_prodsearch_variable_is_a_settings_field(compose: dict[str, Any]) -> None:
    seen = 0
    for name, service in services(compose).items():
        for key, value in env_of(service).items():
            if not key.startswith("PRODSEARCH_"):
                continue
            seen += 1
            target = key.removesuffix("_FILE") if key.endswith("_FILE") else key
            assert settings_field(target) is not None, f"{name}: {key} sets no settings field"
            if key.endswith("_FILE"):
                assert value.startswith("/run/secrets/"), f"{name}: {key} is not a secret file"
    assert seen >= 20


def test_the_settings_accept_the_compose_values(compose: dict[str, Any],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Each service's environment builds a valid Settings (secret files stand in)."""
    for name, service in services(compose).items():
        env = env_of(service)
        if not any(k.startswith("PRODSEARCH_") for k in env):
            continue
        with monkeypatch.context() as m:
            for key in [k for k in os.environ if k.startswith("PRODSEARCH_")]:
                m.delenv(key)
            for key, value in env.items():
                if key.endswith("_FILE"):
                    key = key.removesuffix("_FILE")
                    value = "postgresql+psycopg://prodsearch:pw@postgres:5432/prodsearch"
                m.setenv(key, value)
            settings = Settings()
            if name.startswith(("serve", "migrate")):
                assert not settings.embedded, f"{name} must use the Qdrant cluster"
            if name.startswith("serve"):
                assert settings.encoder.worker_url and settings.database_url.get_secret_value()


def test_secrets_are_files_not_values(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for key, value in env_of(service).items():
            assert not re.search(r"PASSWORD$|API_KEY$|DATABASE_URL$", key), \
                f"{name}: {key} passes a secret as a value; use a secret file"
            assert "://" not in value or "@" not in value, f"{name}: credentials in {key}"
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./deploy/secrets/")
    ignored = (ROOT / "deploy/secrets/.gitignore").read_text(encoding="utf-8").split()
    assert "*" in ignored


def test_dockerfile_basics() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    torch_pin = re.search(r'"(torch==[^"]+)"', pyproject)
    assert torch_pin is not None
    torch_at = text.index(torch_pin[1])
    assert torch_at < text.index("pip install --no-cache-dir ."), "torch before the package"
    assert "openclipart-png" in text and 'WITH_DEMO_IMAGES" = "1"' in text
    assert re.search(r"^USER \S+", text, re.M), "runs as a non-root user"
    assert 'ENTRYPOINT ["/app/deploy/entrypoint.sh"]' in text
    for word in ("PASSWORD", "SECRET", "API_KEY", "DATABASE_URL"):
        assert not re.search(rf"^(ENV|ARG).*{word}", text, re.M | re.I), word
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8")
    assert "deploy/secrets/" in ignore
    for copied in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / copied).exists(), copied
    assert (ROOT / "deploy/entrypoint.sh").stat().st_mode & 0o111
