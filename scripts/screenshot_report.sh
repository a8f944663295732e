#!/usr/bin/env bash
# Render a grading HTML report with headless Chromium: a PNG screenshot, and optionally the DOM
# after scripts ran (to check that submitted text stayed text).
# usage: scripts/screenshot_report.sh REPORT.html OUT.png [DOM.html]
# Needs Debian's chromium (apt-get install -y chromium); CJK glyphs need a CJK font
# (e.g. fonts-wqy-microhei or fonts-noto-cjk), otherwise they show as boxes.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 REPORT.html OUT.png [DOM.html]" >&2
    exit 2
fi
report=$(realpath "$1")
out=$2
dom=${3:-}
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    echo "error: chromium not found (apt-get install -y chromium)" >&2
    exit 2
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
       --disable-background-networking --disable-component-update --disable-sync
       --user-data-dir="$profile")
"$browser" "${flags[@]}" --screenshot="$out" --window-size=1400,2000 "file://$report" >/dev/null 2>&1
if [ -n "$dom" ]; then
    "$browser" "${flags[@]}" --dump-dom "file://$report" >"$dom" 2>/dev/null
fi
test -s "$out"
echo "wrote $out${dom:+ and $dom}"
