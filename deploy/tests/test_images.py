"""Dockerfiles of nats-api and the generated TPC-H worker, checked without a Docker engine:
stages, base images, the paths they copy, the user, the port and the health check, each
against the sources they build."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT, default_port, routes


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse_dockerfile(path: Path) -> Dockerfile:
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in logical:
        keyword, _, args = instruction.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages:
            assert keyword == "ARG", f"{path}: only ARG may come before FROM, got {keyword}"
            key, _, value = args.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append((keyword, args))
    return Dockerfile(path, global_args, stages)


@dataclass
class Image:
    name: str
    dockerfile: Path
    context: Path
    binary: str
    port_constant: str
    router: str


IMAGES = [
    Image("nats-api", ROOT / "nats-api/Dockerfile", ROOT, "nats-api", "API_LISTEN", "nats-api/src/lib.rs"),
    Image(
        "tpch-worker",
        ROOT / "examples/tpch/worker/Dockerfile",
        ROOT,
        "tpch-worker",
        "WORKER_LISTEN",
        "runtime/src/worker/run.rs",
    ),
]


@pytest.fixture(params=IMAGES, ids=lambda image: image.name)
def image(request) -> Image:
    return request.param


def test_multi_stage_build_on_one_alpine_release(image: Image):
    docker = parse_dockerfile(image.dockerfile)
    assert len(docker.stages) == 2, "a builder stage and a small final stage"
    build, final = docker.stages
    assert build.name == "build"
    assert "ALPINE_VERSION" in docker.global_args and docker.global_args["ALPINE_VERSION"]
    assert build.image == "rust:1-alpine${ALPINE_VERSION}"
    assert final.image == "alpine:${ALPINE_VERSION}", "builder and final stage share the Alpine release"
    assert not final.all("RUN") or all("cargo" not in run for run in final.all("RUN")), "no toolchain in the final image"


def test_copy_sources_exist_in_the_build_context(image: Image):
    docker = parse_dockerfile(image.dockerfile)
    build = docker.stages[0]
    for stage in docker.stages:
        for args in stage.all("COPY"):
            words = shlex.split(args)
            flags = [w for w in words if w.startswith("--")]
            sources = [w for w in words if not w.startswith("--")][:-1]
            assert sources, f"COPY {args}"
            if any(flag.startswith("--from=") for flag in flags):
                # Copied out of the builder: the builder must have put it there.
                assert "--from=build" in flags
                for source in sources:
                    assert any(source in run for run in build.all("RUN")), f"{source} is never produced"
            else:
                for source in sources:
                    assert (image.context / source).exists(), f"{source} is not in {image.context}"


def test_builds_the_real_package(image: Image):
    build = parse_dockerfile(image.dockerfile).stages[0]
    cargo = " ".join(run for run in build.all("RUN") if "cargo build" in run)
    assert "--release" in cargo
    if image.name == "nats-api":
        assert "-p nats-api" in cargo and "--locked" in cargo
        manifest = ROOT / "nats-api/Cargo.toml"
    else:
        manifest_path = re.search(r"--manifest-path (\S+)", cargo).group(1)
        manifest = image.context / manifest_path
        assert f"--bin {image.binary}" in cargo
    assert manifest.is_file(), manifest
    assert f'name = "{image.binary}"' in manifest.read_text()
    assert f"/cargo-target/release/{image.binary} /out/{image.binary}" in cargo


def test_native_libraries_the_binary_links_are_installed(image: Image):
    """Diesel's PostgreSQL and SQLite backends link libpq and libsqlite3 (Cargo.lock holds
    pq-sys and libsqlite3-sys): the builder needs their headers, the final image the libs."""
    lock = (ROOT / "Cargo.lock").read_text()
    assert 'name = "pq-sys"' in lock and 'name = "libsqlite3-sys"' in lock
    docker = parse_dockerfile(image.dockerfile)
    build_runs = " ".join(docker.stages[0].all("RUN"))
    final_runs = " ".join(docker.final.all("RUN"))
    for package in ("libpq-dev", "sqlite-dev", "musl-dev"):
        assert package in build_runs
    for package in ("libpq", "sqlite-libs", "ca-certificates"):
        assert re.search(rf"apk add --no-cache [^&]*\b{package}\b", final_runs), package
    env = " ".join(docker.stages[0].all("ENV"))
    assert "-C target-feature=-crt-static" in env, "musl links libpq dynamically only without crt-static"


def test_runs_as_a_non_root_user(image: Image):
    final = parse_dockerfile(image.dockerfile).final
    (user,) = final.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    runs = " ".join(final.all("RUN"))
    assert f"adduser -S -D -H -u {uid}" in runs and f"addgroup -S -g {gid}" in runs
    # The chart's pod security context runs as the same user.
    values = (ROOT / "helm/nomnom/values.yaml").read_text()
    assert f"runAsUser: {uid}" in values and f"runAsGroup: {gid}" in values


def test_port_and_health_check_match_the_binary(image: Image):
    final = parse_dockerfile(image.dockerfile).final
    port = default_port(image.port_constant)
    assert final.all("EXPOSE") == [str(port)]
    (health,) = final.all("HEALTHCHECK")
    match = re.search(r"CMD wget -q -O /dev/null http://127\.0\.0\.1:(\d+)(/\S+)", health)
    assert match, health
    assert int(match.group(1)) == port
    assert match.group(2) == "/health"
    assert "/health" in routes(image.router)
    (entrypoint,) = final.all("ENTRYPOINT")
    target = entrypoint.strip('[]" ')
    copies = final.all("COPY")
    assert any(copy.endswith(" " + target) for copy in copies), f"{target} is never copied in"


def test_build_context_leaves_out_build_output():
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "**/target" in ignore and ".git" in ignore and ".tools" in ignore
    # BuildKit reads <Dockerfile>.dockerignore instead of the context's for that Dockerfile.
    worker_ignore = (ROOT / "examples/tpch/worker/Dockerfile.dockerignore").read_text().split()
    assert "**/target" in worker_ignore and "**/.git" in worker_ignore
    # What the builds copy is not ignored.
    for kept in ("Cargo.toml", "Cargo.lock", "runtime", "nats-api", "examples"):
        assert kept not in ignore and kept not in worker_ignore


def test_template_renders_the_committed_worker_dockerfile():
    """examples/tpch/worker/Dockerfile is generated from templates/worker/Dockerfile.tera;
    the parts that do not depend on the project are the same lines."""
    template = (ROOT / "templates/worker/Dockerfile.tera").read_text()
    generated = (ROOT / "examples/tpch/worker/Dockerfile").read_text()
    for line in template.splitlines():
        if "{{" not in line and "{%" not in line:
            assert line in generated.splitlines(), line
