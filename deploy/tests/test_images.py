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
        "runtime/src/worker/health.rs",
    ),
]


@pytest.fixture(params=IMAGES, ids=lambda image: image.name)
def image(request) -> Image:
    return request.param


def test_multi_stage_build_into_an_empty_image(image: Image):
    docker = parse_dockerfile(image.dockerfile)
    assert len(docker.stages) == 2, "a builder stage and a small final stage"
    build, final = docker.stages
    assert build.name == "build"
    assert "ALPINE_VERSION" in docker.global_args and docker.global_args["ALPINE_VERSION"]
    # The builder is an argument (the Docker tests pass a local one); its public default
    # is Rust on Alpine: musl, for a static binary.
    assert build.image == "${RUST_IMAGE}"
    assert docker.global_args["RUST_IMAGE"] == "rust:1-alpine${ALPINE_VERSION}"
    assert final.image == "scratch", "only the binary and the CA certificates"
    assert not final.all("RUN"), "nothing can run in an empty image"


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
                # Copied out of the builder: the builder must have put it there (a RUN
                # made it, or it is the CA bundle of the ca-certificates package).
                assert "--from=build" in flags
                for source in sources:
                    if source == "/etc/ssl/certs/ca-certificates.crt":
                        assert re.search(r"apk add --no-cache [^&]*\bca-certificates\b", " ".join(build.all("RUN")))
                        continue
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
    # The target the builder builds for: its own (musl on Alpine) unless it sets
    # CARGO_BUILD_TARGET; the binary is taken from that target's directory.
    assert '--target "$target"' in cargo
    assert "target=\"${CARGO_BUILD_TARGET:-$(rustc -vV | sed -n 's/^host: //p')}\"" in cargo
    assert f'"/cargo-target/$target/release/{image.binary}" /out/{image.binary}' in cargo


def test_the_binary_is_static_with_the_databases_built_in(image: Image):
    """Diesel's PostgreSQL and SQLite backends link libpq and libsqlite3 (Cargo.lock holds
    pq-sys and libsqlite3-sys). The image builds them, and the OpenSSL libpq uses, from
    source into the binary (feature bundled-databases: pq-sys/bundled,
    libsqlite3-sys/bundled, openssl-sys/vendored), and musl links the C runtime
    statically by default, so nothing is left to install. docs/deploy.md records `ldd` of
    such a build on this machine's glibc target: only the C library remained."""
    lock = (ROOT / "Cargo.lock").read_text()
    for crate in ("pq-src", "libsqlite3-sys", "openssl-src"):
        assert f'name = "{crate}"' in lock, crate
    runtime = (ROOT / "runtime/Cargo.toml").read_text()
    assert (
        'bundled-databases = ["pq-sys/bundled", "libsqlite3-sys/bundled", "openssl-sys/vendored"]' in runtime
    )
    docker = parse_dockerfile(image.dockerfile)
    build = docker.stages[0]
    cargo = " ".join(run for run in build.all("RUN") if "cargo build" in run)
    assert "--features bundled-databases" in cargo
    if image.name == "nats-api":
        manifest = (ROOT / "nats-api/Cargo.toml").read_text()
    else:
        manifest_path = re.search(r"--manifest-path (\S+)", cargo).group(1)
        manifest = (image.context / manifest_path).read_text()
    assert 'bundled-databases = ["nomnom-runtime/bundled-databases"]' in manifest
    build_runs = " ".join(build.all("RUN"))
    # A C compiler and libc headers for libpq and SQLite; perl, make and the kernel headers
    # for OpenSSL's build.
    for package in ("musl-dev", "perl", "make", "linux-headers"):
        assert re.search(rf"apk add --no-cache [^&]*\b{package}\b", build_runs), package
    # Another builder than Alpine must bring them: the build checks, and fails saying so.
    assert re.search(r"if command -v apk >/dev/null; then\s+apk add", build_runs)
    for tool in ("cargo", "cc", "perl", "make"):
        assert re.search(rf"for tool in [^;]*\b{tool}\b", build_runs), tool
    env = " ".join(build.all("ENV"))
    assert "crt-static" not in env, "musl links statically by default; -crt-static would undo it"


def test_runs_as_a_non_root_user(image: Image):
    final = parse_dockerfile(image.dockerfile).final
    (user,) = final.all("USER")
    uid, _, gid = user.partition(":")
    # Numeric: an empty image has no /etc/passwd to look a name up in.
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    # The chart's pod security context runs as the same user.
    values = (ROOT / "helm/nomnom/values.yaml").read_text()
    assert f"runAsUser: {uid}" in values and f"runAsGroup: {gid}" in values


def test_port_and_health_check_match_the_binary(image: Image):
    final = parse_dockerfile(image.dockerfile).final
    port = default_port(image.port_constant)
    assert final.all("EXPOSE") == [str(port)]
    (health,) = final.all("HEALTHCHECK")
    (entrypoint,) = final.all("ENTRYPOINT")
    target = entrypoint.strip('[]" ')
    # No shell or wget in the image: the binary probes its own listen address
    # (runtime/src/healthcheck.rs), on the port above unless NOMNOM_*LISTEN moves both.
    match = re.search(r'CMD \["([^"]+)", "healthcheck", "(/\w+)"\]', health)
    assert match, health
    assert match.group(1) == target
    assert match.group(2) == "/health"
    assert "/health" in routes(image.router)
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
