#!/usr/bin/env bash
# Debian packages the test suite uses for real parts (a one-node Slurm: slurm-wlm, munge; a headless browser).
# Installs the missing ones when run as root with apt-get; otherwise prints one line saying how.
# Usage: scripts/system_deps.sh PACKAGE...
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages for the tests: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "error: the tests need Debian packages ${missing[*]}: run 'sudo apt-get install ${missing[*]}' (or make test as root)" >&2
  exit 2
fi
