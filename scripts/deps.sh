#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need, when they are missing: with apt-get when this
# runs as root; otherwise it names what is missing and the command that installs it, and fails.
set -euo pipefail

# git: the tests serve repositories with `git http-backend` and build histories with the git CLI.
# gcc, make, pkg-config, libssl-dev, zlib1g-dev: libgit2, libssh2 and SQLite are built from their crates.
# openssh-server, openssh-client: the ssh tests start a real sshd on 127.0.0.1.
# systemd: systemd-analyze scores the unit's hardening.
# chromium, chromium-driver: the web catalog is checked in headless Chromium over WebDriver.
# postgresql: the PostgreSQL catalog is tested on a real server (scripts/pg.sh starts a throwaway one).
packages=(git gcc make pkg-config libssl-dev zlib1g-dev openssh-server openssh-client systemd chromium
  chromium-driver postgresql)

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "error: the tests need these Debian packages, which are not installed: ${missing[*]}" >&2
    echo "install them as root (apt-get install ${missing[*]}), or run this script as root" >&2
    exit 1
  fi
fi
