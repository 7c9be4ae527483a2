#!/usr/bin/env bash
# Put promtool (Prometheus' rule checker, for tests/observability) into DEST, from Debian's prometheus
# package: only the binary is unpacked, nothing is installed system-wide and no service is started.
# Usage: scripts/install_promtool.sh .venv/bin
set -euo pipefail
dest=$(cd "${1:?usage: install_promtool.sh DEST_DIR}" && pwd)
if [ -x "$dest/promtool" ]; then exit 0; fi
if command -v promtool >/dev/null 2>&1; then ln -sf "$(command -v promtool)" "$dest/promtool"; exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_promtool: no promtool and no apt-get: install Prometheus' promtool and put it on PATH" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get download prometheus >/dev/null; }
dpkg-deb -x prometheus_*.deb unpacked
install -m 0755 unpacked/usr/bin/promtool "$dest/promtool"
