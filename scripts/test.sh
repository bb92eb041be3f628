#!/usr/bin/env bash
# The README's test command: installs what the tests need when it is missing, then runs the whole test suite.
#
#   scripts/test.sh [cargo test arguments…]
#
# Debian packages are installed with apt-get when this runs as root; otherwise the script names what is
# missing and the command that installs it, and stops. The tests themselves never skip: one that cannot run
# fails and says why. A run that reports any ignored test fails too.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
if ! command -v cargo >/dev/null; then
  echo "error: cargo is not installed: this project needs a Rust toolchain (1.95 or newer)" >&2
  exit 1
fi
if [ ! -d ../shared/fixtures ]; then
  echo "error: ../shared/fixtures is missing: the tests read the fixture repositories beside this checkout" >&2
  exit 1
fi

log=$(mktemp)
pgdir=$(mktemp -d)
trap 'rm -f "$log"; scripts/pg.sh stop "$pgdir"' EXIT
# The PostgreSQL tests' server: Debian's postgresql, a throwaway data directory, 127.0.0.1, a free port.
pgvars=$(scripts/pg.sh start "$pgdir")
eval "$pgvars"
status=0
cargo test --locked "$@" 2>&1 | tee "$log" || status=$?
if [ "$status" -ne 0 ]; then
  exit "$status"
fi
if grep -E '^test result: .* [1-9][0-9]* ignored' "$log" >/dev/null; then
  echo "error: some tests were ignored; every test must run (see the lines marked 'ignored' above)" >&2
  exit 1
fi
