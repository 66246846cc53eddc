#!/usr/bin/env bash
# Smoke check: every fuzz target still compiles against the current library.
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); RUSTC_BOOTSTRAP lets stable rustc take
# the nightly-only sanitizer flags cargo-fuzz passes. See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 1
fi
RUSTC_BOOTSTRAP=1 cargo fuzz build "$@"
echo "fuzz targets build: $(cargo fuzz list | tr '\n' ' ')"
