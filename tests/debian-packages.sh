#!/usr/bin/env bash
# Install the missing packages of tests/debian-packages.txt: as root on Debian, in one apt-get call, none when all
# are present. Elsewhere say what is missing and go on: the tests that need it skip (outside CI) or fail (CI=true).
set -euo pipefail
list="$(dirname "$0")/debian-packages.txt"
mapfile -t wanted < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$list" | grep -v '^$')
command -v dpkg-query >/dev/null || { echo "debian-packages: not Debian; the tests needing ${wanted[*]} may skip"; exit 0; }
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "debian-packages: missing ${missing[*]} (not root, so not installing: sudo apt-get install -y ${missing[*]})"
  exit 0
fi
echo "debian-packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# One call; only a machine whose package lists are missing or stale needs the update before it.
apt-get install -y -q --no-install-recommends "${missing[@]}" \
  || { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; }
