"""Render the HTML report in headless Chromium, as a person would look at it.

Needs Debian's `chromium` (CI installs it). This test fails, rather than skips, without it.
"""

import shutil
import subprocess

import pytest
from grade_helpers import FIXTURES, GT, TEST

from tangpoem.grade.cli import main

ROOT = FIXTURES.parents[2]


@pytest.mark.slow
def test_report_renders_in_chromium_and_submitted_script_stays_text(tmp_path):
    assert shutil.which("chromium") or shutil.which("chromium-browser"), "install chromium (apt-get install -y chromium)"
    report = tmp_path / "report.html"
    code = main([str(FIXTURES / "xss.txt"), str(FIXTURES / "perfect.txt"), str(FIXTURES / "binary.txt"),
                 "--gt", str(GT), "--test", str(TEST), "--html", str(report)])
    assert code == 1
    png, dom = tmp_path / "report.png", tmp_path / "dom.html"
    subprocess.run(["bash", str(ROOT / "scripts" / "screenshot_report.sh"), str(report), str(png), str(dom)],
                   check=True, timeout=120, capture_output=True)
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 50_000  # a blank 1400x2000 page is ~10 kB
    rendered = dom.read_text(encoding="utf-8")
    assert "&lt;script&gt;document.title=\"HACKED\"&lt;/script&gt;" in rendered  # shown as text
    assert "<title>Tang poem grading report</title>" in rendered  # the injected script did not run
    assert "HACKED</title>" not in rendered and "<img" not in rendered
    assert "binary file (contains NUL bytes)" in rendered
