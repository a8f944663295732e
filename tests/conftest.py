from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COURSE_DIR = Path(os.environ.get("TANGPOEM_TEST_DATA_DIR", REPO.parent / "shared" / "data" / "GenAI-Hw5"))

# Every test reads the course data from ../shared (CI has it there too); nothing is copied into the repo.
os.environ.setdefault("TANGPOEM_DATA_DIR", str(COURSE_DIR))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def course_dir() -> Path:
    assert (COURSE_DIR / "Tang_training_data.json").is_file(), f"course data missing at {COURSE_DIR}"
    return COURSE_DIR


@pytest.fixture(params=["tiny-mistral", "tiny-llama"])
def tiny_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tiny_config(tmp_path: Path, course_dir: Path):
    """The tiny-cpu config with its output in a temp dir."""
    from tangpoem.config import load_config

    def make(**overrides):
        values = {"output_dir": str(tmp_path / "run"), "data_dir": str(course_dir)}
        values.update(overrides)
        return load_config(REPO / "configs" / "tiny-cpu.yaml", values)

    return make


@pytest.fixture(autouse=True)
def messages_speak_to_the_command_line():
    """Each test starts with messages worded for the CLI: a notebook helper run in-process earlier
    (lessons.config_from_parameters) switches them to notebook wording for the rest of the process."""
    from tangpoem.errors import speak_to

    speak_to("cli")
    yield
    speak_to("cli")
