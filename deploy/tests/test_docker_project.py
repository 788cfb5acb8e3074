"""A project's own compose file, generated as docs/getting-started.md says, run end to
end with a Docker engine (after test_docker.py's stack is down: both publish the ports
the docs use). Run by scripts/docker-test.sh; helpers in test_docker.py."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from docker_support import (
    DOCKER,
    Stack,
    build_args,
    compose_env,
    curl_examples,
    http,
    message_status,
    poll,
    record,
    run,
    run_curl,
    start,
    stop,
)

pytestmark = pytest.mark.docker




@pytest.fixture(scope="module")
def project(images, engine):
    """`nomnom init` and `nomnom generate` as docs/getting-started.md runs them, in a home
    directory inside the checkout (the build context must hold the crate and the
    runtime), with an absolute --runtime-path; its worker image built through its own
    compose file, then the stack up."""
    metadata = json.loads(run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT).stdout)
    run(["cargo", "build", "--quiet", "--locked", "-p", "nomnom-codegen"], timeout=1800, cwd=ROOT)
    nomnom = Path(metadata["target_directory"]) / "debug/nomnom"
    home = Path(tempfile.mkdtemp(prefix=".docker-test-home-", dir=ROOT))
    try:
        run([str(nomnom), "init", "my-project"], cwd=home)
        run(
            [str(nomnom), "generate", "--entities", "my-project/entities.yaml", "--output", "my-project/worker",
             "--runtime-path", str(ROOT / "runtime")],
            cwd=home,
        )
        stack = Stack(home / "my-project/worker/docker-compose.nats.yml", "nomnomproject", {**compose_env(), "POSTGRES_DB": "events"})
        started = time.monotonic()
        stack.compose("build", *build_args(), "worker", timeout=3600)
        record("generated worker build seconds", round(time.monotonic() - started))
        tag = yaml.safe_load(stack.compose("config").stdout)["services"]["worker"]["image"]
        size = json.loads(run([DOCKER, "image", "inspect", tag]).stdout)[0]["Size"]
        record("generated worker image bytes", size)
        start(stack)
        try:
            yield stack
        finally:
            stop(stack)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_generated_project_stack_persists_an_event_and_dead_letters_an_invalid_one(project: Stack, curl_home: Path):
    # The getting-started curl, as written.
    (command,) = [c for c in curl_examples(ROOT / "docs/getting-started.md") if "/message/event" in c]
    code, body = run_curl(command, curl_home)
    assert code == "202", (code, body)
    message_id = json.loads(body)["message_id"]
    poll(lambda: message_status(message_id) == "persisted", 60, "the getting-started event persisted")
    sent = json.loads(re.search(r"-d '([^']*)'", command).group(1))
    assert project.psql(f"SELECT kind FROM event WHERE id = '{sent['id']}'") == sent["kind"]

    status, body = http("POST", "/api/ingest/message/event", json.dumps(dict(sent, kind="purchase")).encode())
    assert status == 202, (status, body)
    invalid_id = body["message_id"]
    poll(lambda: message_status(invalid_id) == "dead_lettered", 60, "an event of unknown kind dead-lettered")
    _, status = http("GET", f"/api/ingest/status/{invalid_id}")
    assert "kind" in json.dumps(status), status
    assert all(project.health(s) == "healthy" for s in ("nats", "postgres", "nats-api", "worker"))
