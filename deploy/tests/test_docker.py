"""The deployment for real, with a Docker engine: the nats-api and TPC-H worker images
built from their Dockerfiles, docker-compose.nats.yml run end to end, the containers'
user, read-only root file system and SIGTERM drain, and the curl examples of
docs/deploy.md, README.md and docs/http-api.md run as written. Run by
scripts/docker-test.sh (`pytest --docker`); helpers and fixtures in docker_support.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT
from docker_support import (
    API,
    Built,
    DOCKER,
    REPORT,
    SIZE_LIMITS,
    Stack,
    base_image,
    build_args,
    compose_env,
    curl_examples,
    docker_build,
    http,
    message_status,
    poll,
    port_is_free,
    post_order,
    record,
    run,
    run_curl,
    start,
    stop,
    wait_all_healthy,
)

pytestmark = pytest.mark.docker


@pytest.mark.parametrize("name, binary", [("nats-api", "/nats-api"), ("tpch-worker", "/worker")])
def test_images_are_small_static_and_run_as_a_non_root_user(images, name, binary):
    image = images[name]
    assert image.size <= SIZE_LIMITS[name], f"{name}: {image.size} bytes, over {SIZE_LIMITS[name]}"
    assert image.config["User"] == "10001:10001"
    assert image.config["Entrypoint"] == [binary]
    assert image.config["Healthcheck"]["Test"] == ["CMD", binary, "healthcheck", "/health"]
    # FROM scratch: the binary and the CA bundle, nothing else (no shell, no libraries).
    container = run([DOCKER, "create", image.tag]).stdout.strip()
    try:
        exported = run([DOCKER, "export", container], text=False).stdout
    finally:
        run([DOCKER, "rm", container])
    listing = subprocess.run(["tar", "-t"], input=exported, capture_output=True, check=True).stdout.decode().split()
    # What the engine adds to every container's file system is not the image's.
    engine_files = {".dockerenv", "etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab"}
    files = {
        f for f in listing
        if not f.endswith("/") and f not in engine_files and not f.startswith(("dev/", "proc/", "sys/"))
    }
    assert files == {binary.lstrip("/"), "etc/ssl/certs/ca-certificates.crt"}, files
    # A static binary runs with nothing around it, on a read-only root, as 10001.
    usage = run([DOCKER, "run", "--rm", "--read-only", image.tag, "--help"])
    assert "Usage:" in usage.stdout and "healthcheck" in usage.stdout, usage.stdout


def test_top_level_stack_persists_an_order_and_dead_letters_an_invalid_one(top_stack: Stack, orders):
    order = json.loads(orders[0])
    # Posted with curl, as a client would.
    result = run(
        ["curl", "-sS", "-w", "\n%{http_code}", "-X", "POST", f"{API}/api/ingest/message/order",
         "-H", "content-type: application/json", "--data-binary", orders[0]]
    )
    body, code = result.stdout.rsplit("\n", 1)
    assert code == "202", result.stdout
    message_id = json.loads(body)["message_id"]
    poll(lambda: message_status(message_id) == "persisted", 60, f"order {order['o_orderkey']} persisted")
    row = top_stack.psql(f"SELECT o_custkey, o_totalprice FROM orders WHERE o_orderkey = {order['o_orderkey']}")
    assert row == f"{order['o_custkey']}|{order['o_totalprice']}", row
    lines = top_stack.psql(f"SELECT count(*) FROM lineitem WHERE l_orderkey = {order['o_orderkey']}")
    assert int(lines) == len(order["lineitems"]) > 0

    invalid = dict(order, o_orderstatus="X")
    invalid_id = post_order(json.dumps(invalid))
    poll(lambda: message_status(invalid_id) == "dead_lettered", 60, "invalid order dead-lettered")
    _, status = http("GET", f"/api/ingest/status/{invalid_id}")
    assert "o_orderstatus" in json.dumps(status), status


def test_processes_run_as_the_non_root_user_on_a_read_only_root(top_stack: Stack):
    for service in ("nats-api", "worker"):
        inspect = json.loads(run([DOCKER, "inspect", top_stack.container(service)]).stdout)[0]
        assert inspect["HostConfig"]["ReadonlyRootfs"] is True, f"{service}: read_only"
        pid = inspect["State"]["Pid"]
        status = Path(f"/proc/{pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
        gids = re.search(r"^Gid:\s+(.*)$", status, re.M).group(1).split()
        assert set(uids) == {"10001"} and set(gids) == {"10001"}, f"{service}: uids {uids}, gids {gids}"


def test_sigterm_drains_the_worker_and_nothing_is_lost(top_stack: Stack, orders):
    worker = top_stack.container("worker")
    before = int(top_stack.psql("SELECT count(*) FROM nomnom_message_status"))
    burst = orders[1:]
    # The backlog first (worker stopped), then the worker drains it.
    run([DOCKER, "stop", worker])
    ids = []
    for start_at in range(0, len(burst), 500):
        chunk = "\n".join(burst[start_at:start_at + 500]).encode()
        status, body = http("POST", "/api/ingest/batch/order", chunk, {"content-type": "application/x-ndjson"})
        assert status == 202 and body["accepted"] == len(burst[start_at:start_at + 500]), (status, body)
        ids += [item["message_id"] for item in body["items"]]
    run([DOCKER, "start", worker])
    count = lambda: int(top_stack.psql("SELECT count(*) FROM nomnom_message_status")) - before
    poll(lambda: count() >= 1, 120, "the worker draining the backlog", interval=0.05)
    stopped = time.monotonic()
    run([DOCKER, "stop", "-t", "30", worker], timeout=60)
    stop_seconds = time.monotonic() - stopped
    at_stop = count()
    state = json.loads(run([DOCKER, "inspect", worker]).stdout)[0]["State"]
    # SIGTERM, not the SIGKILL after the grace period: the batch in hand was finished.
    assert state["ExitCode"] == 0 and not state["OOMKilled"], state
    assert stop_seconds < 30, f"the worker took {stop_seconds:.1f} s to stop"
    assert at_stop < len(ids), "the worker finished before it was stopped: no drain was interrupted"
    record("worker stop seconds (SIGTERM mid-drain)", round(stop_seconds, 2))
    run([DOCKER, "start", worker])
    poll(lambda: count() == len(ids), 300, f"all {len(ids)} messages recorded", interval=1)
    # Exactly once: one status row per message, all persisted, one row per order and line.
    statuses = top_stack.psql(
        "SELECT status, count(*), max(attempts) FROM nomnom_message_status WHERE message_id IN ("
        + ",".join(f"'{i}'" for i in ids) + ") GROUP BY status"
    )
    assert statuses.split("|")[:2] == ["persisted", str(len(ids))], statuses
    keys = [json.loads(line)["o_orderkey"] for line in burst]
    lineitems = sum(len(json.loads(line)["lineitems"]) for line in burst)
    key_list = ",".join(map(str, keys))
    assert int(top_stack.psql(f"SELECT count(*) FROM orders WHERE o_orderkey IN ({key_list})")) == len(set(keys))
    assert int(top_stack.psql(f"SELECT count(*) FROM lineitem WHERE l_orderkey IN ({key_list})")) == lineitems
    assert top_stack.health("worker") in ("healthy", "starting")


def test_deploy_md_curl_examples_do_what_the_text_says(top_stack: Stack, curl_home: Path):
    """docs/deploy.md: the order posted is accepted (202), then persisted as a row of
    `orders`, and its status lookup says so (`<message_id>`: the id the post answered)."""
    commands = curl_examples(ROOT / "docs/deploy.md")
    posts = [c for c in commands if "-X POST" in c]
    assert posts and len(commands) > len(posts), commands
    message_id = None
    for command in commands:
        if "<message_id>" in command:
            assert message_id, f"{command}: no message posted before it"
            poll(lambda: message_status(message_id) in ("persisted", "dead_lettered"), 60, f"{command}: processed")
            code, body = run_curl(command.replace("<message_id>", message_id), curl_home)
            assert code == "200" and json.loads(body)["status"] == "persisted", f"docs/deploy.md's order: {body}"
            continue
        code, body = run_curl(command, curl_home)
        assert code == "202", (command, code, body)
        message_id = json.loads(body)["message_id"]
        sent = json.loads(re.search(r"-d '([^']*)'", command).group(1))
        poll(lambda: message_status(message_id) in ("persisted", "dead_lettered"), 60, f"{command}: processed")
        row = top_stack.psql(
            f"SELECT o_custkey, o_totalprice FROM orders WHERE o_orderkey = {sent['o_orderkey']}"
        )
        assert row == f"{sent['o_custkey']}|{sent['o_totalprice']}", (row, http("GET", f"/api/ingest/status/{message_id}"))


def test_readme_curl_examples_do_what_the_text_says(top_stack: Stack, curl_home: Path):
    """README's "Try the API", against the composed stack: the short bodies are accepted
    (202), then dead-lettered by the TPC-H worker, and the status lookup says which field
    is missing; the probe and the metrics answer."""
    commands = curl_examples(ROOT / "README.md")
    assert len(commands) >= 6, commands
    ids: list[str] = []
    for command in commands:
        if "<message_id>" in command:
            assert ids, f"{command}: no message posted before it"
            poll(lambda: message_status(ids[0]) == "dead_lettered", 60, "README's first order dead-lettered")
            code, body = run_curl(command.replace("<message_id>", ids[0]), curl_home)
            assert code == "200", (command, code, body)
            assert json.loads(body)["status"] == "dead_lettered" and "is required" in body, body
            continue
        code, body = run_curl(command, curl_home)
        if "-X POST" in command:
            assert code == "202", (command, code, body)
            answer = json.loads(body)
            ids += [item["message_id"] for item in answer["items"]] if "items" in answer else [answer["message_id"]]
        elif command.endswith("/metrics"):
            assert code == "200" and "# TYPE" in body, (command, code, body[:500])
        else:
            assert code == "200", (command, code, body)
    assert len(ids) == 4, ids
    for message_id in ids:
        poll(lambda: message_status(message_id) == "dead_lettered", 60, f"{message_id} dead-lettered")


def test_http_api_md_curl_examples_do_what_the_text_says(top_stack: Stack, curl_home: Path):
    """docs/http-api.md: a message accepted with its Idempotency-Key (202; the short
    order is then dead-lettered), a batch with one malformed line (207: one accepted, one
    rejected as invalid_json), a status lookup by id (the example's id: the one posted),
    and lookups by keys never sent (404 not_found, "same answers as by id")."""
    commands = curl_examples(ROOT / "docs/http-api.md")
    assert len(commands) == 5, commands
    message_id = None
    for command in commands:
        if "/api/ingest/message/" in command:
            code, body = run_curl(command, curl_home)
            assert code == "202", (command, code, body)
            message_id = json.loads(body)["message_id"]
        elif "/api/ingest/batch/" in command:
            code, body = run_curl(command, curl_home)
            answer = json.loads(body)
            assert code == "207" and (answer["accepted"], answer["rejected"]) == (1, 1), (code, answer)
            assert answer["items"][1]["error"]["code"] == "invalid_json", answer
        elif "/api/ingest/status/" in command:
            assert message_id, f"{command}: no message posted before it"
            example = re.search(r"/status/(\S+)", command).group(1)
            poll(lambda: message_status(message_id) == "dead_lettered", 60, "the short order dead-lettered")
            code, body = run_curl(command.replace(example, message_id), curl_home)
            assert code == "200" and json.loads(body)["status"] == "dead_lettered", (code, body)
        else:
            assert "idempotency_key=" in command, command
            code, body = run_curl(command, curl_home)
            assert code == "404" and json.loads(body)["error"]["code"] == "not_found", (command, code, body)
