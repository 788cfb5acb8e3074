#!/usr/bin/env bash
# What Diesel's table sizes cost to compile: diesel (and diesel_derives) built with the
# features generated crates use, once per table size (32, 64 and 128 columns), after
# their dependencies are built, so only the two crates whose code grows are timed.
# Each size is timed `runs` times (default 3) in alternation; prints every time and the
# medians. Uses the versions this workspace's Cargo.lock pins, offline.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs="${1:-3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
version="$(grep -A1 '^name = "diesel"$' "$root/Cargo.lock" | sed -n 's/^version = "\(.*\)"$/\1/p')"
for size in 32 64 128; do
  mkdir -p "$work/c$size/src"
  : > "$work/c$size/src/lib.rs"
  cat > "$work/c$size/Cargo.toml" <<TOML
[package]
name = "tables$size"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
diesel = { version = "=$version", default-features = false, features = ["postgres", "sqlite", "r2d2", "chrono", "uuid", "$size-column-tables"] }

[workspace]
TOML
  cp "$root/Cargo.lock" "$work/c$size/Cargo.lock"
  (cd "$work/c$size" && cargo build --quiet --offline --target-dir "$work/t$size" >/dev/null 2>&1)
done
declare -A times
for run in $(seq "$runs"); do
  for size in 32 64 128; do
    (cd "$work/c$size" && cargo clean --quiet --offline --target-dir "$work/t$size" -p diesel -p diesel_derives)
    start=$(date +%s.%N)
    (cd "$work/c$size" && cargo build --quiet --offline --target-dir "$work/t$size")
    seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
    times[$size]="${times[$size]:-} $seconds"
    printf '%s-column-tables run %s: %.1f s\n' "$size" "$run" "$seconds"
  done
done
for size in 32 64 128; do
  median=$(printf '%s\n' ${times[$size]} | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf '%s-column-tables: median %.1f s (diesel + diesel_derives, debug build)\n' "$size" "$median"
done
