"""The Docker image and docker-compose.yml, checked without a Docker engine (none runs here).

What can be checked is: which files the image gets (the Dockerfile's COPY lines
over the build context that .dockerignore leaves), that those files install with
``pip install .`` into a fresh venv and build the app, the compose file's
structure, and ``docker compose config`` when a compose client is installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from functools import cache
from pathlib import Path

import pytest
import yaml

from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SETTING_NAMES = {f"LOOPWATCH_{name.upper()}" for name in Settings.model_fields}


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def _pattern(glob: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex over relative paths (Go's filepath.Match, plus ``**``)."""
    out, i = "", 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif glob.startswith("**", i):
            out, i = out + ".*", i + 2
        elif glob[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif glob[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(glob[i]), i + 1
    return re.compile(out)


@cache
def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception ``!...``, pattern) per line of .dockerignore, in order."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, _pattern(os.path.normpath(line.lstrip("!")).lstrip("/"))))
    return rules


def _ignored(relative: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for negated, pattern in _ignore_rules():
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            verdict = not negated
    return verdict


@cache
def build_context() -> tuple[str, ...]:
    """Every file Docker sends as the build context, relative to the repository root."""
    prune = not any(negated for negated, _ in _ignore_rules())
    files = []
    for folder, dirs, names in os.walk(ROOT):
        here = Path(folder).relative_to(ROOT).as_posix()
        prefix = "" if here == "." else here + "/"
        if prune:
            dirs[:] = [d for d in dirs if not _ignored(prefix + d)]
        files += [prefix + name for name in names if not _ignored(prefix + name)]
    return tuple(sorted(files))


def _instructions(name: str) -> list[list[str]]:
    """The arguments of each ``name`` instruction (exec form or shell words), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    found = []
    for line in text.splitlines():
        keyword, _, rest = line.strip().partition(" ")
        if keyword.upper() == name:
            rest = rest.strip()
            found.append(json.loads(rest) if rest.startswith("[") else shlex.split(rest))
    return found


def image_files() -> list[str]:
    """The build-context files the Dockerfile copies into the image."""
    sources = []
    for arguments in _instructions("COPY"):
        paths = [a for a in arguments if not a.startswith("--")]
        sources += [os.path.normpath(source) for source in paths[:-1]]
    return [f for f in build_context() if any(s == "." or f == s or f.startswith(s + "/") for s in sources)]


def test_the_image_gets_every_package_pyproject_installs_and_nothing_local() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    files = set(image_files())
    assert {"curation", "services", "streams"} <= set(packages)
    for package in packages:
        assert f"{package}/__init__.py" in files, f"{package} is not copied into the image"
        sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py")}
        assert sources - {s for s in sources if "__pycache__" in s} <= files
    for package, globs in pyproject["tool"]["setuptools"]["package-data"].items():
        for glob in globs:
            assert any(
                f"{package}/{p.relative_to(ROOT / package).as_posix()}" in files
                for p in (ROOT / package).glob(glob)
            )
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= files
    local = [f for f in files if f.split("/")[0] in {".venv", ".git", ".mypy_cache", ".loopwatch"}]
    assert not local and not [f for f in files if "__pycache__" in f or f.endswith(".egg-info")]


def test_the_dockerfile_installs_the_package_for_cpu_as_a_non_root_user() -> None:
    [(source, copied)] = [args for args in _instructions("COPY")]
    assert source == "."  # the whole context: a package added to pyproject is in the image too
    [run] = [args for args in _instructions("RUN") if "pip" in args]
    assert run[:2] == ["pip", "install"] and copied in run[: run.index("&&")]
    assert not {"-e", "--editable"} & set(run)  # a plain install, as users do; the source is removed
    assert run[run.index("--extra-index-url") + 1] == "$TORCH_INDEX_URL"
    assert _instructions("ARG") == [["TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"]]
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.13.0" in dependencies  # the pin the CPU index serves as 2.13.0+cpu
    [[user]] = _instructions("USER")
    assert user not in {"root", "0"}
    env = dict(pair.split("=", 1) for args in _instructions("ENV") for pair in args)
    assert {name for name in env if name.startswith("LOOPWATCH_")} <= SETTING_NAMES
    [volumes] = _instructions("VOLUME")
    assert set(volumes) == {env["LOOPWATCH_DATA_DIR"], env["LOOPWATCH_DATASETS_ROOT"]}
    assert _instructions("CMD") == [["loopwatch", "worker"]]


def test_the_copied_files_install_into_a_fresh_venv_and_build_the_app(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for name in image_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    venv = tmp_path / "venv"
    # Without pip: its bundled setuptools is too old, the project venv's pip and setuptools are used.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The dependencies come from the project's venv, appended after the fresh venv's own
    # site-packages; a plain path entry, so the project's editable-install hook is not run.
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", str(source)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    check = f"""
import streams.app
from retrain_trigger.policy import load_policy
from core.settings import Settings
from streams.app import create_app
assert streams.app.__file__.startswith({site!r}), streams.app.__file__
create_app(Settings(data_dir={str(tmp_path / "state")!r}))
print(load_policy().name)
"""
    result = subprocess.run(
        [python, "-c", check], capture_output=True, text=True, cwd=tmp_path, env={"PATH": os.environ["PATH"]}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert sorted(Path(site, "schemas", "jsonschema").glob("*.json"))


def _compose_client() -> list[str] | None:
    """``docker compose`` (v2 plugin) or ``docker-compose`` (v1), whichever works here."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run([*command, "version"], capture_output=True)
        if probe.returncode == 0:
            return command
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    client = _compose_client()
    if client is None:
        message = "no docker compose client here (the docker CLI lacks the compose plugin)"
        if os.environ.get("CI"):  # .ci/run installs Debian's docker-compose: missing there is a failure
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        [*client, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == {"kafka", "worker-1", "worker-2", "console", "prometheus", "grafana"}
    assert set(resolved["volumes"]) == {"worker-1-state", "worker-2-state", "datasets", "grafana"}


def workers(services: dict) -> dict[str, dict]:
    return {name: service for name, service in services.items() if name.startswith("worker")}


def test_compose_runs_kafka_in_kraft_mode_workers_and_prometheus() -> None:
    services = load("docker-compose.yml")["services"]
    assert set(services) == {"kafka", "worker-1", "worker-2", "console", "prometheus", "grafana"}

    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in " ".join(env)
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]

    for worker in workers(services).values():
        wenv = worker["environment"]
        assert wenv["LOOPWATCH_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert wenv["LOOPWATCH_WEB_HOST"] == "0.0.0.0"
        # Every LOOPWATCH_ variable the compose file sets is a real setting.
        assert set(wenv) <= SETTING_NAMES
        assert worker["command"] == ["loopwatch", "worker"]
        assert (ROOT / worker["build"] / "Dockerfile").exists()


def test_each_worker_keeps_its_state_in_its_own_volume_and_the_datasets_in_a_shared_one() -> None:
    compose = load("docker-compose.yml")
    declared = set(compose["volumes"])
    state, datasets = [], []
    for worker in workers(compose["services"]).values():
        mounts = dict(reversed(volume.split(":")[:2]) for volume in worker["volumes"])
        env = worker["environment"]
        state.append(mounts[env["LOOPWATCH_DATA_DIR"]])
        datasets.append(mounts[env["LOOPWATCH_DATASETS_ROOT"]])
        assert set(mounts.values()) <= declared  # named volumes: they outlive a recreated container
    assert len(set(state)) == len(state) == 2  # per-replica state (RocksDB join store, caches)
    assert len(set(datasets)) == 1  # one set of curated tables, not two halves


def test_the_console_reads_the_history_the_workers_write_and_needs_a_token_off_loopback() -> None:
    services = load("docker-compose.yml")["services"]
    console = services["console"]
    command = console["command"]
    option = dict(zip(command[2::2], command[3::2], strict=True))
    assert command[:2] == ["loopwatch", "console"] and option["--host"] == "0.0.0.0"
    assert "LOOPWATCH_CONSOLE_TOKEN" in console["environment"]  # refused without it off loopback
    assert console["ports"] == [f"127.0.0.1:{option['--port']}:{option['--port']}"]
    mounts = dict(reversed(volume.split(":")[:2]) for volume in console["volumes"])
    for worker in workers(services).values():
        env = worker["environment"]
        assert env["LOOPWATCH_HISTORY_ROOT"] == option["--history"]
        assert env["LOOPWATCH_DATASETS_ROOT"] == option["--datasets"]
        worker_mounts = dict(reversed(volume.split(":")[:2]) for volume in worker["volumes"])
        assert worker_mounts[env["LOOPWATCH_DATASETS_ROOT"]] == mounts[option["--datasets"]]


def test_prometheus_scrapes_every_workers_metrics_port() -> None:
    compose = load("docker-compose.yml")["services"]
    assert compose["prometheus"]["ports"] == ["9090:9090"]
    mount = compose["prometheus"]["volumes"][0].split(":")[0]
    [scrape] = load(mount.removeprefix("./"))["scrape_configs"]
    [targets] = [config["targets"] for config in scrape["static_configs"]]
    expected = {f"{name}:{w['environment']['LOOPWATCH_WEB_PORT']}" for name, w in workers(compose).items()}
    assert set(targets) == expected
    assert set(compose["prometheus"]["depends_on"]) == set(workers(compose))


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> host path (./...) or named volume, of a service's volumes."""
    return {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}


def test_prometheus_loads_loopwatchs_alert_rules_where_its_config_names_them() -> None:
    prometheus = load("docker-compose.yml")["services"]["prometheus"]
    mounts = _mounts(prometheus)
    config_path = next(path for path, host in mounts.items() if host == "./deploy/prometheus.yml")
    config = load("deploy/prometheus.yml")
    [rules] = config["rule_files"]
    # rule_files are relative to the config file, in the container as for promtool here.
    in_container = os.path.normpath(os.path.join(os.path.dirname(config_path), rules))
    assert mounts[in_container] == "./deploy/prometheus/rules.yml"
    assert (ROOT / "deploy" / rules).exists()


def test_grafana_is_provisioned_with_prometheus_and_the_loopwatch_dashboard() -> None:
    compose = load("docker-compose.yml")
    grafana = compose["services"]["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    assert grafana["ports"] == ["3000:3000"] and grafana["depends_on"] == ["prometheus"]
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    assert mounts["/var/lib/grafana"] in compose["volumes"]  # its own state outlives the container
    [source] = load("deploy/grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"]
    assert source["url"] == f"http://prometheus:{compose['services']['prometheus']['ports'][0].split(':')[1]}"
    [provider] = load("deploy/grafana/provisioning/dashboards/loopwatch.yml")["providers"]
    dashboards = provider["options"]["path"]
    assert mounts[dashboards] == "./deploy/grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert os.path.dirname(home) == dashboards
    assert (ROOT / "deploy" / "grafana" / "dashboards" / os.path.basename(home)).exists()
    assert json.loads((ROOT / "deploy/grafana/dashboards/loopwatch.json").read_text())["uid"]
