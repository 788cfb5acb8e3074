"""Helpers and fixtures of the Docker tests (test_docker.py, test_docker_project.py):
the deployment for real, with a Docker engine: the nats-api and TPC-H worker images
built from their Dockerfiles, docker-compose.nats.yml and the compose file `nomnom
generate` writes for a project run end to end, the containers' user, read-only root
file system and SIGTERM drain, and the curl examples of docs/deploy.md run as written.

Run by scripts/docker-test.sh (`pytest --docker`), which installs and starts the engine
and builds local stand-ins for the public base images (no Docker Hub here), passed in
NOMNOM_RUST_IMAGE, NATS_IMAGE and POSTGRES_IMAGE. Without --docker these tests are not
collected; with it, an engine that does not answer fails them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

DOCKER = os.environ.get("NOMNOM_DOCKER", "/usr/bin/docker")
API = "http://localhost:8080"
# Design targets of the images (docs/deploy.md), with room for a toolchain's drift: for
# the Dockerfiles' default profile (fat LTO, one codegen unit), and for the faster one
# scripts/docker-test.sh builds with unless told otherwise (no LTO, 16 codegen units).
SHIPPED_PROFILE = os.environ.get("NOMNOM_DOCKER_LTO", "fat") == "fat" and os.environ.get(
    "NOMNOM_DOCKER_CODEGEN_UNITS", "1"
) == "1"
SIZE_LIMITS = (
    {"nats-api": 20_000_000, "tpch-worker": 28_000_000}
    if SHIPPED_PROFILE
    else {"nats-api": 30_000_000, "tpch-worker": 36_000_000}
)
REPORT = Path(os.environ.get("NOMNOM_DOCKER_REPORT", ROOT / "target/docker-report.json"))


def run(args: list[str], *, timeout: float = 120, check: bool = True, text: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Runs a command, its output captured; a failure shows the command and its output."""
    result = subprocess.run(args, capture_output=True, text=text, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        pytest.fail(
            f"{shlex.join(args)} exited with {result.returncode}\n"
            f"--- stdout\n{result.stdout[-4000:]!s}\n--- stderr\n{result.stderr[-4000:]!s}"
        )
    return result


def poll(condition, timeout: float, what: str, interval: float = 0.25):
    """Calls `condition` until it returns something truthy; fails naming `what` and the
    last value it returned."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def record(key: str, value) -> None:
    """Adds a measured figure to the report scripts/docker-test.sh prints."""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    data[key] = value
    REPORT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def http(method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, parsed JSON or text) of a request to the composed nats-api."""
    request = urllib.request.Request(API + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def message_status(message_id: str) -> str | None:
    status, body = http("GET", f"/api/ingest/status/{message_id}")
    return body.get("status") if status == 200 and isinstance(body, dict) else None


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="session")
def engine() -> str:
    result = run([DOCKER, "info", "--format", "{{.ServerVersion}}"], check=False)
    if result.returncode != 0:
        pytest.fail(
            f"no Docker engine answers ({os.environ.get('DOCKER_HOST', 'default socket')}): "
            f"run these tests with scripts/docker-test.sh, which starts one\n{result.stderr}"
        )
    return result.stdout.strip()


def base_image(variable: str) -> str:
    image = os.environ.get(variable)
    if not image:
        pytest.fail(f"{variable} is not set: run these tests with scripts/docker-test.sh, which builds the base images")
    return image


def build_args() -> list[str]:
    args = ["--build-arg", f"RUST_IMAGE={base_image('NOMNOM_RUST_IMAGE')}"]
    for variable, arg in (("NOMNOM_DOCKER_LTO", "CARGO_LTO"), ("NOMNOM_DOCKER_CODEGEN_UNITS", "CARGO_CODEGEN_UNITS")):
        if os.environ.get(variable):
            args += ["--build-arg", f"{arg}={os.environ[variable]}"]
    return args


@dataclass
class Built:
    tag: str
    seconds: float
    size: int
    config: dict


def docker_build(engine: str, tag: str, dockerfile: str, context: Path) -> Built:
    started = time.monotonic()
    run(
        [DOCKER, "build", "--progress=plain", *build_args(), "-t", tag, "-f", dockerfile, str(context)],
        timeout=3600,
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )
    seconds = time.monotonic() - started
    inspect = json.loads(run([DOCKER, "image", "inspect", tag]).stdout)[0]
    return Built(tag, seconds, inspect["Size"], inspect["Config"])


@pytest.fixture(scope="session")
def images(engine: str) -> dict[str, Built]:
    """nats-api's and the TPC-H worker's images, built from the repository's Dockerfiles
    with the tags the compose file runs by default."""
    built = {
        "nats-api": docker_build(engine, "nomnom/nats-api:latest", "nats-api/Dockerfile", ROOT),
        "tpch-worker": docker_build(engine, "tpch-worker:latest", "examples/tpch/worker/Dockerfile", ROOT),
    }
    for name, image in built.items():
        record(f"{name} image bytes", image.size)
        record(f"{name} build seconds", round(image.seconds))
    return built


@dataclass
class Stack:
    """A docker-compose project: up, wait for healthy, down."""

    file: Path
    project: str
    env: dict[str, str] = field(default_factory=dict)
    containers: dict[str, str] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        return run(
            ["docker-compose", "-f", str(self.file), "-p", self.project, *args],
            timeout=timeout,
            check=check,
            env={**os.environ, **self.env},
            cwd=self.file.parent,
        )

    def container(self, service: str) -> str:
        if service not in self.containers:
            container = self.compose("ps", "-q", service).stdout.strip()
            assert container, f"{service} has no container"
            self.containers[service] = container
        return self.containers[service]

    def health(self, service: str) -> str:
        result = run(
            [DOCKER, "inspect", "--format", "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}", self.container(service)],
            check=False,
        )
        return result.stdout.strip()

    def wait_healthy(self, services, timeout: float = 180) -> None:
        for service in services:
            poll(lambda: self.health(service) == "healthy" or self.health(service), timeout, f"{service} healthy")
            status = self.health(service)
            if status != "healthy":
                logs = self.compose("logs", "--tail", "40", service, check=False).stdout
                pytest.fail(f"{service} is {status}, not healthy\n{logs}")

    def psql(self, sql: str) -> str:
        user = self.env.get("POSTGRES_USER", "nomnom")
        db = self.env.get("POSTGRES_DB", "tpch")
        result = run([DOCKER, "exec", self.container("postgres"), "psql", "-U", user, "-d", db, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        return result.stdout.strip()

    def running(self) -> list[str]:
        result = run([DOCKER, "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={self.project}"])
        return result.stdout.split()


def compose_env() -> dict[str, str]:
    return {"NATS_IMAGE": base_image("NATS_IMAGE"), "POSTGRES_IMAGE": base_image("POSTGRES_IMAGE")}


def start(stack: Stack) -> Stack:
    for port in (8080, 9090, 4222, 8222, 5432):
        assert port_is_free(port), f"port {port} is taken: the compose stacks publish the default ports the docs use"
    stack.compose("down", "-v", "--remove-orphans", check=False)
    stack.compose("up", "-d", timeout=600)
    wait_all_healthy(stack)
    return stack


def wait_all_healthy(stack: Stack) -> None:
    # Every service through its own healthcheck: wget for NATS, pg_isready, and the
    # binaries' `healthcheck /ready`.
    for service in ("nats", "postgres", "nats-api", "worker"):
        poll(lambda s=service: stack.health(s) in ("healthy", "unhealthy"), 240, f"{service} health decided")
        assert stack.health(service) == "healthy", stack.compose("logs", "--tail", "60", service, check=False).stdout


def stop(stack: Stack) -> None:
    stack.containers.clear()
    stack.compose("down", "-v", "--remove-orphans", timeout=300)
    # Nothing of the project is left: no container, running or stopped.
    assert stack.running() == [], f"docker-compose down left {stack.running()}"
    volumes = run([DOCKER, "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={stack.project}"])
    assert volumes.stdout.split() == [], volumes.stdout


@pytest.fixture(scope="session")
def orders() -> list[str]:
    """Real TPC-H orders with their line items (tpchgen), one JSON document per line."""
    result = run(["cargo", "run", "--quiet", "--locked", "-p", "tpch-data", "--bin", "tpch-orders", "--", "3000"], timeout=1800, cwd=ROOT)
    lines = result.stdout.splitlines()
    assert len(lines) == 3000
    return lines


@pytest.fixture(scope="module")
def top_stack(images, engine):
    # Tiny batches, so that draining a backlog takes long enough to stop the worker in
    # the middle of it (NOMNOM_BATCH_SIZE is one of the file's settings).
    stack = start(Stack(ROOT / "docker-compose.nats.yml", "nomnomtop", {**compose_env(), "NOMNOM_BATCH_SIZE": "2"}))
    try:
        yield stack
    finally:
        stop(stack)


def post_order(order: str) -> str:
    status, body = http("POST", "/api/ingest/message/order", order.encode(), {"content-type": "application/json"})
    assert status == 202, (status, body)
    return body["message_id"]


def curl_examples(markdown: Path) -> list[str]:
    """The curl commands of a markdown file's sh blocks, as written: a command goes on
    while a line ends with a backslash or a quote is open."""
    commands, block, pending = [], False, None
    for line in markdown.read_text().splitlines():
        if line.startswith("```"):
            block = line.strip() == "```sh"
            continue
        if not block:
            continue
        if pending is None and not re.match(r"^(\S.*\|\s*)?curl ", line):
            continue
        pending = line if pending is None else pending + "\n" + line
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote
            continue
        if not pending.endswith("\\"):
            commands.append(pending)
            pending = None
    assert pending is None, f"{markdown}: unterminated command {pending!r}"
    return commands


@pytest.fixture(scope="session")
def curl_home(tmp_path_factory) -> Path:
    """A curl configuration that makes curl print the status code after the body, so that
    the docs' commands run unchanged."""
    home = tmp_path_factory.mktemp("curl")
    (home / ".curlrc").write_text('silent\nshow-error\nwrite-out = "\\n%{http_code}"\n')
    return home


def run_curl(command: str, curl_home: Path) -> tuple[str, str]:
    """Runs a docs' curl command as written (bash); returns (status code, body)."""
    result = run(["bash", "-c", command], timeout=30, env={**os.environ, "CURL_HOME": str(curl_home)})
    body, code = result.stdout.rsplit("\n", 1)
    return code, body


