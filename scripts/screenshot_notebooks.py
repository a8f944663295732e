"""Render executed notebooks as a student sees them: HTML (nbconvert) and PNG screenshots (headless Chromium).

    tangpoem notebooks run --config nano-cpu --out runs/nano -p max_steps 4 -p num_train_data 64
    python scripts/screenshot_notebooks.py runs/nano            # -> runs/nano/screenshots/NN_name-pK.png

Each notebook becomes NN_name.html and as many 1280 x 1800 screenshots as its page is tall. Then look at
them. Needs nbconvert (the dev extra) and Debian's chromium with a CJK font for the HTML text:
`apt-get install -y chromium fonts-wqy-microhei` (the figures carry their own font; the page does not).
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WIDTH, PAGE = 1280, 1800
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--force-device-scale-factor=1",
                  "--virtual-time-budget=10000"]
# Written into the page: its full height, read back from the DOM once the page has loaded.
MEASURE = ("<script>window.addEventListener('load', () => "
           "document.body.setAttribute('data-page-height', document.documentElement.scrollHeight));</script>")


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise SystemExit("error: chromium not found (apt-get install -y chromium fonts-wqy-microhei)")
    return found


def to_html(notebook: Path) -> str:
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    exporter.mathjax_url = ""  # offline: nothing to fetch
    html, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    return html


def chromium(args: list[str], page: Path, profile: Path) -> str:
    command = [browser(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True).stdout


def page_height(html_file: Path, profile: Path) -> int:
    dom = chromium(["--dump-dom"], html_file, profile)
    found = re.search(r'data-page-height="(\d+)"', dom)
    return int(found.group(1)) if found else PAGE


def screenshots(notebook: Path, out_dir: Path) -> list[Path]:
    """NN_name.html and NN_name-p1.png, -p2.png ... (the page cut into viewport-high pieces)."""
    html = to_html(notebook)
    html_file = out_dir / f"{notebook.stem}.html"
    html_file.write_text(html.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    shots = []
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile each run: no state from earlier runs
        pages = math.ceil(page_height(html_file, Path(profile)) / PAGE)
        for number in range(pages):
            shifted = out_dir / f".{notebook.stem}-p{number + 1}.html"
            style = f"<style>body {{ transform: translateY(-{number * PAGE}px); }}</style>"
            shifted.write_text(html.replace("</head>", style + "</head>"), encoding="utf-8")
            shot = out_dir / f"{notebook.stem}-p{number + 1}.png"
            chromium([f"--screenshot={shot}", f"--window-size={WIDTH},{PAGE}"], shifted, Path(profile))
            shifted.unlink()
            if blank(shot):  # the measured height counts the page's bottom margin
                shot.unlink()
            else:
                shots.append(shot)
    return shots


def blank(png: Path) -> bool:
    from PIL import Image

    with Image.open(png) as image:
        low, _ = image.convert("L").getextrema()
    return low > 250


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the --out folder of `tangpoem notebooks run` (executed NN_*.ipynb)")
    parser.add_argument("--out", type=Path, help="where the HTML and PNGs go (default: RUN_DIR/screenshots)")
    args = parser.parse_args()
    notebooks = sorted(args.run_dir.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        print(f"error: {args.run_dir}: no executed notebooks (NN_name.ipynb)", file=sys.stderr)
        return 2
    out_dir = args.out or args.run_dir / "screenshots"
    out_dir.mkdir(parents=True, exist_ok=True)
    for notebook in notebooks:
        shots = screenshots(notebook, out_dir)
        print(f"{notebook.name}: {len(shots)} screenshots, {out_dir / notebook.stem}.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
