"""docker-compose.yml cannot run here (no Docker engine), so its structure is checked."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_compose_runs_kafka_in_kraft_mode_workers_and_prometheus():
    services = load("docker-compose.yml")["services"]
    assert set(services) == {"kafka", "worker", "prometheus"}

    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in " ".join(env)
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]

    worker = services["worker"]
    wenv = worker["environment"]
    assert wenv["LOOPWATCH_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert wenv["LOOPWATCH_WEB_HOST"] == "0.0.0.0"
    # Every LOOPWATCH_ variable the compose file sets is a real setting.
    fields = {f"LOOPWATCH_{name.upper()}" for name in Settings.model_fields}
    assert set(wenv) <= fields
    assert worker["command"] == ["loopwatch", "worker"]
    assert (ROOT / worker["build"] / "Dockerfile").exists()


def test_prometheus_scrapes_the_workers_metrics_port():
    compose = load("docker-compose.yml")["services"]["prometheus"]
    assert compose["ports"] == ["9090:9090"]
    mount = compose["volumes"][0].split(":")[0]
    scrape = load(mount.removeprefix("./"))["scrape_configs"][0]
    assert scrape["dns_sd_configs"][0]["names"] == ["worker"]
    assert scrape["dns_sd_configs"][0]["port"] == 6066
