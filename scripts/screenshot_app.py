"""A PNG of `tangpoem app` as a browser shows it: the app on a free 127.0.0.1 port, headless Chromium.

    python scripts/screenshot_app.py app.png                        # tangpoem-nano, output_dir of nano-cpu
    python scripts/screenshot_app.py app.png --config tiny-cpu --set output_dir=/tmp/run

Needs Debian's chromium and a CJK font (apt-get install -y chromium fonts-wqy-microhei). Chromium gets a
fresh profile, no background traffic, and a resolver that answers only for 127.0.0.1 (nothing else is
fetched: a web font the page asks for falls back to a local one). The server is stopped at the end.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from tangpoem.app import Poet, build_app, launch
from tangpoem.config import load_config, parse_set

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic", "--hide-scrollbars",
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def screenshot(url: str, out: Path, width: int, height: int, wait_ms: int) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("error: chromium not found (apt-get install -y chromium fonts-wqy-microhei)")
    with tempfile.TemporaryDirectory() as profile:
        # virtual time: the page's scripts run (Gradio draws everything in JavaScript) before the picture
        subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--virtual-time-budget={wait_ms}", f"--screenshot={out.resolve()}", url],
                       check=True, timeout=180, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--config", default="nano-cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1800)
    parser.add_argument("--wait-ms", type=int, default=20000, help="virtual time for the page's scripts")
    args = parser.parse_args(argv)

    app = build_app(Poet.load(load_config(args.config, parse_set(args.overrides))))
    try:
        _, url, _ = launch(app, "127.0.0.1", free_port(), block=False)
        screenshot(url, args.out, args.width, args.height, args.wait_ms)
    finally:
        app.close()
    if not args.out.is_file() or args.out.stat().st_size == 0:
        raise SystemExit(f"error: chromium wrote no picture to {args.out}")
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes) from {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
