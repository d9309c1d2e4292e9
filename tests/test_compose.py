"""docker-compose.yml is parsed and checked: every service can be built or pulled, the SDPO services get the
production settings, dependencies wait for the right conditions, the worker reserves a GPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SDPO_SERVICES = ("migrate", "app", "worker")


def test_expected_services():
    assert set(SERVICES) == {"redis", "postgres", "migrate", "app", "worker", "sandbox"}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_an_image_or_build(name):
    svc = SERVICES[name]
    assert "image" in svc or "build" in svc
    if "build" in svc:
        dockerfile = ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]
        assert dockerfile.is_file(), dockerfile


@pytest.mark.parametrize("name", SDPO_SERVICES)
def test_sdpo_services_get_postgres_and_redis(name):
    env = SERVICES[name]["environment"]
    assert env["SDPO_DATABASE_URL"].startswith("postgresql+psycopg://") and "@postgres:5432/" in env["SDPO_DATABASE_URL"]
    assert env["SDPO_BROKER_URL"].startswith("redis://redis:6379/")
    assert env["SDPO_DATA_DIR"] == "/data"


def test_postgres_has_env_and_healthcheck_and_redis_healthcheck():
    pg = SERVICES["postgres"]
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"} <= set(pg["environment"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert "ping" in SERVICES["redis"]["healthcheck"]["test"]


def test_migrate_is_one_shot_after_postgres():
    m = SERVICES["migrate"]
    assert m["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert m["command"] == ["alembic", "upgrade", "head"] and m["restart"] == "no"


@pytest.mark.parametrize("name", ["app", "worker"])
def test_app_and_worker_wait_for_migrations_and_servers(name):
    deps = SERVICES[name]["depends_on"]
    assert deps["migrate"]["condition"] == "service_completed_successfully"
    assert deps["postgres"]["condition"] == "service_healthy"
    assert deps["redis"]["condition"] == "service_healthy"


def test_worker_reserves_the_gpu_it_is_given_and_app_requires_auth():
    """Each worker container reserves one named GPU (SDPO_GPU_ID, default 0), not "any one GPU", and sees it as
    its only device: no CUDA_VISIBLE_DEVICES inside (an index other than 0 would hide it)."""
    w = SERVICES["worker"]
    (device,) = w["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["device_ids"] == ["${SDPO_GPU_ID:-0}"] and "count" not in device
    assert "CUDA_VISIBLE_DEVICES" not in w["environment"]
    assert w["command"] == ["sdpo", "worker"]
    # the GPU image (vLLM), with room in /dev/shm for the engine's processes
    assert w["build"]["dockerfile"] == "docker/worker-gpu.Dockerfile" and w["image"] != SERVICES["app"]["image"]
    assert ".[gpu]" in (ROOT / "docker/worker-gpu.Dockerfile").read_text()
    assert w["shm_size"].endswith("gb")
    app = SERVICES["app"]
    assert app["environment"]["SDPO_HOST"] == "0.0.0.0" and "SDPO_AUTH" in app["environment"]


@pytest.mark.parametrize("name", SDPO_SERVICES)
def test_settings_accept_the_compose_environment(monkeypatch, name):
    """Each SDPO service's environment is a valid Settings (not refused as unsafe or inconsistent, e.g. a
    Redis visibility timeout below the heartbeat timeout)."""
    from backend.settings import Settings

    for key in [k for k in os.environ if k.startswith("SDPO_")]:
        monkeypatch.delenv(key)
    env = dict(SERVICES[name]["environment"])
    if "SDPO_AUTH" in env:
        env["SDPO_AUTH"] = "admin:secret"
    for k, v in env.items():
        if k.startswith("SDPO_"):
            monkeypatch.setenv(k, str(v).replace("${POSTGRES_PASSWORD:-sdpo}", "sdpo").replace(
                "${SDPO_MODEL:-/app/sdpo/toy/demo_model}", "/app/sdpo/toy/demo_model"))
    s = Settings()
    assert s.broker_url == "redis://redis:6379/0" and s.visibility_timeout_s >= s.heartbeat_timeout_s
    assert s.host == ("0.0.0.0" if name == "app" else "127.0.0.1")


def test_sandbox_service_is_isolated_and_shared_with_the_worker_only():
    box = SERVICES["sandbox"]
    assert box["network_mode"] == "none"
    assert "deploy" not in box  # no GPU
    assert box["command"][:3] == ["sdpo", "sandbox", "serve"]
    socket_volume = [v for v in box["volumes"] if v.endswith(":/run/sdpo")]
    assert socket_volume and not any("sdpo-data" in v for v in box["volumes"])
    worker = SERVICES["worker"]
    assert worker["environment"]["SDPO_SANDBOX_SOCKET"].startswith("/run/sdpo/")
    assert socket_volume[0] in worker["volumes"]
    assert not any(v.endswith(":/run/sdpo") for v in SERVICES["app"]["volumes"])
    # root inside its container (strong mode drops each execution to its own uid), the socket handed to the
    # unprivileged user that the worker images run as
    assert str(box["user"]) == "0"
    cmd = box["command"]
    uid = cmd[cmd.index("--socket-uid") + 1]
    for dockerfile in ("docker/Dockerfile", "docker/worker-gpu.Dockerfile"):
        text = (ROOT / dockerfile).read_text()
        assert f"--uid {uid}" in text and "\nUSER " in text, dockerfile
