"""Files that ship with tangpoem: the config files and the teaching notebooks.

In a checkout they are the repository's configs/ and notebooks/; a wheel carries copies of both inside the
package, in shipped/ (pyproject.toml maps them there), so a pip-installed tangpoem finds `nano-cpu` and its
notebooks too.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# The repository students fork and Colab installs from: the notebooks' install cell, their Colab badges and
# the README take it from here (a fork changes it, then re-runs scripts/build_notebooks.py and scripts/build_readme.py).
REPO_URL = "https://github.com/tangpoem/tangpoem"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def colab_badge(notebook: str) -> str:
    """Markdown for an "Open In Colab" badge of `notebook` (a file name in the repository's notebooks/)."""
    url = "https://colab.research.google.com/github/" + REPO_URL.removeprefix("https://github.com/") + "/blob/main/notebooks"
    return f"[![Open In Colab]({COLAB_BADGE})]({url}/{notebook})"

NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"  # numbered, run in name order


def _shipped(name: str) -> Path:
    """The wheel's copy inside the package, else the checkout's folder beside the package."""
    packaged = PACKAGE / "shipped" / name
    return packaged if packaged.is_dir() else PACKAGE.parent / name


def configs_dir() -> Path:
    return _shipped("configs")


def notebooks_dir() -> Path:
    return _shipped("notebooks")


def checkout_notebooks(cwd: Path | None = None) -> Path | None:
    """notebooks/ of the tangpoem checkout the user stands in (its root), if any: its notebooks are the ones
    being edited, so they run instead of the installed copies."""
    root = (cwd or Path.cwd()).resolve()
    folder = root / "notebooks"
    if (root / "pyproject.toml").is_file() and (root / "scripts" / "build_notebooks.py").is_file() and any(folder.glob(NOTEBOOK_GLOB)):
        return folder
    return None
