"""Shared helpers of the deployment tests.

Without --docker, no Docker engine and no Kubernetes cluster run: compose files and Dockerfiles are
parsed and cross-checked against the sources, and the Helm chart is linted and rendered
by real Helm (helm-python-sdk, Helm v4 as a shared library) and validated against the
Kubernetes schemas (kubernetes-validate). Everything works offline.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "nomnom"

ENV_ATTRIBUTE = re.compile(r'\benv\s*=\s*"([A-Z][A-Z0-9_]*)"')


def _env_names(*files: Path) -> set[str]:
    names: set[str] = set()
    for file in files:
        text = file.read_text()
        names |= set(ENV_ATTRIBUTE.findall(text))
    return names


def _rust_log() -> set[str]:
    # tracing-subscriber's EnvFilter::try_from_default_env reads RUST_LOG.
    telemetry = (ROOT / "runtime/src/telemetry.rs").read_text()
    return {"RUST_LOG"} if "from_default_env" in telemetry else set()


@pytest.fixture(scope="session")
def api_env() -> set[str]:
    """Every environment variable nats-api reads: its clap structs and the runtime's."""
    files = [ROOT / "runtime/src/cli.rs", *sorted((ROOT / "nats-api/src").rglob("*.rs"))]
    names = _env_names(*files) | _rust_log()
    assert {"NATS_URL", "NATS_CREDS", "DATABASE_URL", "NOMNOM_LISTEN"} <= names, names
    return names


@pytest.fixture(scope="session")
def worker_env() -> set[str]:
    """Every environment variable a generated worker reads (runtime/src/worker, cli.rs)."""
    files = [ROOT / "runtime/src/cli.rs", *sorted((ROOT / "runtime/src/worker").rglob("*.rs"))]
    names = _env_names(*files) | _rust_log()
    assert {"NATS_URL", "DATABASE_URL", "NOMNOM_WORKER_LISTEN", "NOMNOM_CONSUMER"} <= names, names
    assert "NOMNOM_LISTEN" not in names, "the worker's listen flag has its own variable"
    return names


def default_port(constant: str) -> int:
    """The port of a listen-address default in runtime/src/defaults.rs."""
    defaults = (ROOT / "runtime/src/defaults.rs").read_text()
    match = re.search(rf'pub const {constant}: &str = "[^"]*:(\d+)";', defaults)
    assert match, f"{constant} not found in runtime/src/defaults.rs"
    return int(match.group(1))


def routes(file: str) -> set[str]:
    """Paths a Rust source file routes (axum `.route("/path", …)`)."""
    text = (ROOT / file).read_text()
    return set(re.findall(r'\.route\(\s*"([^"]+)"', text))


def load_yaml_documents(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def dumps(value) -> str:
    return json.dumps(value, indent=1, sort_keys=True)


# The tests that need a Docker engine (test_docker.py, marked `docker`) run only with
# --docker, as scripts/docker-test.sh runs them; the others only without it.
def pytest_addoption(parser):
    parser.addoption(
        "--docker",
        action="store_true",
        help="run the tests that build images and run compose stacks (scripts/docker-test.sh)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "docker: needs a Docker engine (run by scripts/docker-test.sh)")


def pytest_collection_modifyitems(config, items):
    docker = config.getoption("--docker")
    selected = [item for item in items if (item.get_closest_marker("docker") is not None) == docker]
    deselected = [item for item in items if item not in selected]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


# The Docker tests' shared fixtures, defined once for both of their modules (a session
# fixture imported into each module would be set up once per module).
from docker_support import curl_home, engine, images, orders, top_stack  # noqa: E402,F401
