"""Settings: defaults under the data dir, env overrides, refusal of unsafe combinations."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from backend.settings import Settings, is_loopback, parse_auth


def test_defaults_live_under_data_dir(settings, tmp_path):
    data = (tmp_path / "data").resolve()
    assert settings.data_dir == data
    assert settings.database_url == f"sqlite:///{data / 'sdpo.db'}"
    assert settings.broker_url == "filesystem://"
    assert settings.model == str(data / "models" / "tiny")
    assert (settings.host, settings.port, settings.auth, settings.queue) == ("127.0.0.1", 7860, None, "gpu")
    assert settings.job_dir(7) == data / "jobs" / "7"


def test_env_overrides(settings, monkeypatch):
    monkeypatch.setenv("SDPO_DATABASE_URL", "postgresql+psycopg://u@db:5432/sdpo")
    monkeypatch.setenv("SDPO_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("SDPO_PORT", "8000")
    monkeypatch.setenv("SDPO_MODEL", "/models/qwen")
    s = Settings()
    assert (s.database_url, s.broker_url, s.port, s.model) == (
        "postgresql+psycopg://u@db:5432/sdpo", "redis://redis:6379/0", 8000, "/models/qwen")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.org", "::"])
def test_public_bind_without_auth_is_refused(settings, monkeypatch, host):
    monkeypatch.setenv("SDPO_HOST", host)
    with pytest.raises(ValidationError, match="without SDPO_AUTH"):
        Settings()


def test_public_bind_with_auth_is_allowed(settings, monkeypatch):
    monkeypatch.setenv("SDPO_HOST", "0.0.0.0")
    monkeypatch.setenv("SDPO_AUTH", "alice:secret, bob:pw2")
    s = Settings()
    assert s.users == [("alice", "secret"), ("bob", "pw2")]


@pytest.mark.parametrize("bad", ["alice", "alice:", ":pw", "a:b,,c:d"])
def test_malformed_auth_is_refused(settings, monkeypatch, bad):
    monkeypatch.setenv("SDPO_AUTH", bad)
    with pytest.raises(ValidationError, match="not 'user:password'"):
        Settings()


def test_heartbeat_timeout_must_exceed_interval(settings, monkeypatch):
    monkeypatch.setenv("SDPO_HEARTBEAT_INTERVAL_S", "10")
    monkeypatch.setenv("SDPO_HEARTBEAT_TIMEOUT_S", "20")
    with pytest.raises(ValidationError, match="HEARTBEAT_TIMEOUT_S"):
        Settings()


def test_bad_queue_name(settings, monkeypatch):
    monkeypatch.setenv("SDPO_QUEUE", "a queue")
    with pytest.raises(ValidationError, match="SDPO_QUEUE"):
        Settings()


def test_helpers():
    assert parse_auth(None) == [] and parse_auth("u:p:q") == [("u", "p:q")]
    assert is_loopback("127.0.0.2") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")


def test_redis_visibility_timeout_below_heartbeat_timeout_is_refused(settings, monkeypatch):
    monkeypatch.setenv("SDPO_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("SDPO_HEARTBEAT_TIMEOUT_S", "120")
    monkeypatch.setenv("SDPO_VISIBILITY_TIMEOUT_S", "60")
    with pytest.raises(ValidationError, match=r"SDPO_VISIBILITY_TIMEOUT_S=60 is below SDPO_HEARTBEAT_TIMEOUT_S=120"):
        Settings()
    monkeypatch.setenv("SDPO_VISIBILITY_TIMEOUT_S", "120")
    s = Settings()
    assert s.takeover_after_s == s.heartbeat_timeout_s == 120  # one rule says a worker is gone
    monkeypatch.setenv("SDPO_BROKER_URL", "filesystem://")  # no redelivery there: nothing to refuse
    monkeypatch.setenv("SDPO_VISIBILITY_TIMEOUT_S", "1")
    assert Settings().visibility_timeout_s == 1


def test_default_timeouts_are_consistent_on_redis(settings, monkeypatch):
    monkeypatch.setenv("SDPO_BROKER_URL", "redis://redis:6379/0")
    s = Settings()
    assert s.visibility_timeout_s >= s.heartbeat_timeout_s >= 4 * s.heartbeat_interval_s
    assert s.max_resumes == 3


def test_queues_by_gpu_count(settings, monkeypatch):
    assert [settings.queue_for(n) for n in (1, 2, 8)] == ["gpu", "gpu2", "gpu8"]
    assert settings.consumed_queues(None) == ["gpu"] and settings.consumed_queues(1) == ["gpu"]
    assert settings.consumed_queues(4) == ["gpu4"]
    monkeypatch.setenv("SDPO_WORKER_QUEUES", " gpu2, gpu4 ,")
    monkeypatch.setenv("SDPO_WORKER_GPUS", "4")
    s = Settings()
    assert s.consumed_queues(s.worker_gpus) == ["gpu2", "gpu4"] and s.worker_gpus == 4
    monkeypatch.setenv("SDPO_WORKER_QUEUES", "gpu,a b")
    with pytest.raises(ValidationError, match="SDPO_WORKER_QUEUES='a b'"):
        Settings()


def test_queue_name_may_not_end_in_a_digit(settings, monkeypatch):
    monkeypatch.setenv("SDPO_QUEUE", "gpu4")
    with pytest.raises(ValidationError, match="ends in a digit"):
        Settings()
