"""docker-compose.nats.yml (repository root) and the one nomnom generates for a project
(examples/tpch/worker), parsed and checked without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from conftest import ROOT, default_port, routes
from test_images import parse_dockerfile

TOP = ROOT / "docker-compose.nats.yml"
GENERATED = ROOT / "examples/tpch/worker/docker-compose.nats.yml"
SERVICES = {"nats", "postgres", "nats-api", "worker"}
# ${VAR:-default}: every setting comes from the environment, with a default.
INTERPOLATION = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(:-[^}]*)?\}")
# Wiring inside the compose network: fixed on purpose (service names, container ports).
FIXED = {"NATS_URL", "NOMNOM_LISTEN", "NOMNOM_WORKER_LISTEN"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(params=[TOP, GENERATED], ids=["top-level", "generated"])
def compose_path(request) -> Path:
    return request.param


@pytest.fixture
def compose(compose_path: Path) -> dict:
    return load(compose_path)


def healthcheck_url(service: dict) -> str:
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "wget", test
    return test[-1]


def test_services_and_volumes(compose: dict):
    assert "version" not in compose, "compose files no longer take `version`"
    assert set(compose["services"]) == SERVICES
    assert set(compose["volumes"]) == {"nats-data", "pg-data"}


def test_nats_runs_jetstream_with_monitoring_and_a_data_volume(compose: dict):
    nats = compose["services"]["nats"]
    command = nats["command"]
    assert "-js" in command
    store = command[command.index("-sd") + 1]
    monitor = command[command.index("-m") + 1]
    assert monitor == "8222"
    assert f"nats-data:{store}" in nats["volumes"]
    assert {port.split(":")[-1] for port in nats["ports"]} == {"4222", "8222"}
    url = urlparse(healthcheck_url(nats))
    assert url.port == 8222 and url.path == "/healthz" and url.query == "js-enabled-only=true"
    assert nats["healthcheck"]["retries"] >= 5


def test_postgres_healthcheck_uses_pg_isready(compose: dict):
    postgres = compose["services"]["postgres"]
    test = postgres["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and test[1].startswith("pg_isready ")
    env = postgres["environment"]
    # pg_isready asks for the user and database the container creates.
    assert env["POSTGRES_USER"] in test[1] and env["POSTGRES_DB"] in test[1]


def test_applications_wait_for_healthy_dependencies(compose: dict):
    for name in ("nats-api", "worker"):
        depends = compose["services"][name]["depends_on"]
        assert depends == {
            "nats": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
        }, name


def test_every_setting_comes_from_the_environment_with_a_default(compose: dict):
    for name, service in compose["services"].items():
        image = service["image"]
        assert INTERPOLATION.fullmatch(image), f"{name} image {image!r}"
        for port in service.get("ports", []):
            host = port.rsplit(":", 1)[0]
            assert INTERPOLATION.fullmatch(host), f"{name} port {port!r}"
        for key, value in (service.get("environment") or {}).items():
            uses = INTERPOLATION.findall(str(value))
            if key not in FIXED:
                assert uses, f"{name}: {key}={value!r} is not taken from the environment"
        # No ${VAR} without a default anywhere in the service.
        for variable, default in INTERPOLATION.findall(yaml.safe_dump(service)):
            assert default.startswith(":-"), f"{name}: ${{{variable}}} has no default"


def test_environment_variables_are_ones_the_binaries_read(compose: dict, api_env, worker_env):
    services = compose["services"]
    assert set(services["nats-api"]["environment"]) <= api_env, set(services["nats-api"]["environment"]) - api_env
    assert set(services["worker"]["environment"]) <= worker_env, set(services["worker"]["environment"]) - worker_env
    for name in ("nats-api", "worker"):
        env = services[name]["environment"]
        assert env["NATS_URL"] == "nats://nats:4222"
        db = env["DATABASE_URL"]
        assert db.startswith("postgres://") and "@postgres:5432/" in db
        # The same credentials and database the postgres service creates.
        pg = services["postgres"]["environment"]
        assert pg["POSTGRES_USER"] in db and pg["POSTGRES_PASSWORD"] in db and db.endswith(pg["POSTGRES_DB"])


@pytest.mark.parametrize(
    "name, listen_key, constant, router",
    [
        ("nats-api", "NOMNOM_LISTEN", "API_LISTEN", "nats-api/src/lib.rs"),
        ("worker", "NOMNOM_WORKER_LISTEN", "WORKER_LISTEN", "runtime/src/worker/health.rs"),
    ],
)
def test_health_checks_probe_the_real_endpoint_on_the_listen_port(
    compose_path: Path, compose: dict, name, listen_key, constant, router
):
    service = compose["services"][name]
    port = int(service["environment"][listen_key].rsplit(":", 1)[1])
    assert port == default_port(constant)
    assert any(p.endswith(f":{port}") for p in service["ports"])
    # The images have no shell or wget: the binary probes its own listen address (the
    # same NOMNOM_*LISTEN setting), so only the path is given.
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD" and test[2:3] == ["healthcheck"], test
    if "build" in service:
        dockerfile = (compose_path.parent / service["build"]["context"] / service["build"]["dockerfile"]).read_text()
    else:  # a generated project runs the published nats-api image
        dockerfile = (ROOT / "nats-api/Dockerfile").read_text()
    (entrypoint,) = re.findall(r'^ENTRYPOINT \["([^"]+)"\]', dockerfile, re.M)
    assert test[1] == entrypoint, "the image's binary"
    assert test[3] == "/ready" and test[3] in routes(router)


def test_build_contexts_dockerfiles_and_copy_sources_exist(compose_path: Path, compose: dict):
    built = {name: s["build"] for name, s in compose["services"].items() if "build" in s}
    assert "worker" in built
    if compose_path == TOP:
        assert set(built) == {"nats-api", "worker"}
    for name, build in built.items():
        context = (compose_path.parent / build["context"]).resolve()
        dockerfile = context / build["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile}"
        for stage in parse_dockerfile(dockerfile).stages:
            for args in stage.all("COPY"):
                if "--from=" in args:
                    continue
                for source in args.split()[:-1]:
                    assert (context / source).exists(), f"{name}: COPY {source} not in {context}"
        if name == "worker":
            manifest = re.search(r"--manifest-path (\S+)", dockerfile.read_text()).group(1)
            assert (context / manifest).is_file()
            runtime = (context / "runtime/Cargo.toml")
            assert runtime.is_file(), "the worker's path dependency on nomnom-runtime is in the context"


def test_top_level_and_generated_compose_files_agree():
    top, generated = load(TOP), load(GENERATED)
    for name in SERVICES:
        a, b = top["services"][name], generated["services"][name]
        for key in ("command", "ports", "volumes", "healthcheck", "depends_on"):
            assert a.get(key) == b.get(key), f"{name}.{key}"
        assert set(a.get("environment") or {}) == set(b.get("environment") or {}), name
        if name != "worker":
            assert a["image"] == b["image"], name
    # Both build the worker from the same Dockerfile.
    def worker_dockerfile(path: Path, compose: dict) -> Path:
        build = compose["services"]["worker"]["build"]
        return ((path.parent / build["context"]) / build["dockerfile"]).resolve()

    assert worker_dockerfile(TOP, top) == worker_dockerfile(GENERATED, generated)
    assert top["services"]["worker"]["image"] == generated["services"]["worker"]["image"]


def test_generated_compose_comes_from_the_template():
    template = (ROOT / "templates/worker/docker-compose.nats.yml.tera").read_text()
    generated = GENERATED.read_text().splitlines()
    for line in template.splitlines():
        if "{{" not in line and "{%" not in line:
            assert line in generated, line
