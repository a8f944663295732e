#!/usr/bin/env bash
# What the test suite needs beyond Python packages, installed with apt when missing: Debian's headless
# Chromium (tests render the grader's HTML report, the notebooks and the app in it) and a CJK font for it.
# `make test` and CI both run this, so a fresh machine needs nothing else.
set -euo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
dpkg -s fonts-wqy-microhei >/dev/null 2>&1 || missing+=(fonts-wqy-microhei)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
  command -v sudo >/dev/null || { echo "error: the tests need ${missing[*]}: install them with apt-get as root" >&2; exit 2; }
else
  SUDO=
fi
echo "installing ${missing[*]} (apt-get)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
