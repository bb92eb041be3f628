#!/usr/bin/env bash
# Build the Debian package: the release binary, its man page and shell completions (generated from the CLI
# definition), then cargo-deb (`cargo install cargo-deb` once). The .deb lands in target/debian/.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
rm -rf target/assets && mkdir -p target/assets/man
bin=target/release/modelmirror
"$bin" man --dir target/assets/man
"$bin" completions bash > target/assets/modelmirror.bash
"$bin" completions zsh > target/assets/_modelmirror
"$bin" completions fish > target/assets/modelmirror.fish
cargo deb --no-build
