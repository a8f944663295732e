"""`tangpoem app`: served for real on 127.0.0.1 and called through gradio_client, as a browser's page would
call it; the marks it shows are the grader's; one model in memory, the adapter swapped on a checkpoint pick."""

import re
import socket
import subprocess
import sys
import time
from html import unescape
from pathlib import Path

import pytest

from tangpoem.app import Poet, build_app, decoding_settings, form_name, launch, marks_html, poem_verses
from tangpoem.config import load_config
from tangpoem.errors import InputError
from tangpoem.generate import DEMO_COUPLETS, demo_rows, generate
from tangpoem.grade.prosody import poem_marks
from tangpoem.train import train

REPO = Path(__file__).resolve().parent.parent
GREEDY = [0.1, 0.3, 50, 24, 3, False, 42]  # temperature, top-p, top-k, max new tokens, no-repeat n-gram, sample, seed


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, course_dir) -> Path:
    """A tiny-mistral run with two checkpoints (steps 2 and 4) of real training."""
    output_dir = tmp_path_factory.mktemp("app") / "run"
    train(load_config(REPO / "configs" / "tiny-cpu.yaml", {
        "output_dir": str(output_dir), "data_dir": str(course_dir), "num_train_data": 16, "max_steps": 4,
        "save_steps": 2, "learning_rate": 5e-2, "warmup_steps": 0, "lora_dropout": 0.0}))
    return output_dir


def tiny_cfg(tiny_run, course_dir, **overrides):
    return load_config(REPO / "configs" / "tiny-cpu.yaml", {"output_dir": str(tiny_run), "data_dir": str(course_dir),
                                                            "max_new_tokens": 24, **overrides})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mark_classes(marks: str) -> list[tuple[str, str]]:
    """(character, class) of each marked character in the app's HTML."""
    return [(unescape(char), kind) for kind, char in re.findall(r'<span class="ch (\w+)"[^>]*><b>(.*?)</b>', marks)]


def expected_classes(couplet: str, continuation: str) -> list[tuple[str, str]]:
    marks = poem_marks([*sum(poem_verses(couplet, continuation), [])])
    kind = {None: "unknown", True: "fit", False: "off"}
    return [(m.char, "free" if m.wanted is None else kind[m.fits]) for v in marks.verses for m in v.chars]


def test_the_served_app_writes_both_poems_with_the_graders_marks(tiny_run, course_dir):
    """Launched on a free 127.0.0.1 port and called through gradio_client: the predict endpoint returns the
    base model's poem and the adapter's, each as tangpoem.generate writes it, with its marks; the server stops."""
    from gradio_client import Client

    cfg = tiny_cfg(tiny_run, course_dir)
    poet = Poet.load(cfg)
    assert poet.checkpoint == tiny_run / "checkpoint-4"  # checkpoint_index -1
    app = build_app(poet)
    try:
        _, url, share_url = launch(app, "127.0.0.1", free_port(), block=False)
        assert url.startswith("http://127.0.0.1:") and share_url is None
        client = Client(url, verbose=False)
        base, base_marks, tuned, tuned_marks = client.predict(DEMO_COUPLETS[1], *GREEDY, api_name="/predict")
    finally:
        app.close()
    greedy = decoding_settings(cfg, *GREEDY)
    model, tokenizer = poet.model, poet.tokenizer
    assert tuned == generate(model, tokenizer, demo_rows(DEMO_COUPLETS[1:2]), greedy)[0]
    with model.disable_adapter():
        assert base == generate(model, tokenizer, demo_rows(DEMO_COUPLETS[1:2]), greedy)[0]
    assert base != tuned  # the adapter changed something: the two columns are not one model twice
    for poem, marks in ((base, base_marks), (tuned, tuned_marks)):
        assert mark_classes(marks) == expected_classes(DEMO_COUPLETS[1], poem)
        assert unescape(marks).count('class="verse given"') == 2
    assert "checkpoint-4" in tuned_marks and "adapter off" in base_marks
    with pytest.raises(OSError):  # closed: nothing listens any more
        socket.create_connection(("127.0.0.1", int(url.rstrip("/").rsplit(":", 1)[1])), timeout=2)


def test_picking_a_checkpoint_swaps_the_adapter_on_the_same_base_model(tiny_run, course_dir):
    cfg = tiny_cfg(tiny_run, course_dir)
    poet = Poet.load(cfg)
    base_weights = {n: p for n, p in poet.model.named_parameters() if "lora_" not in n}
    greedy = decoding_settings(cfg, *GREEDY)
    poet.use_checkpoint(tiny_run / "checkpoint-2")
    assert poet.checkpoint == tiny_run / "checkpoint-2"
    assert list(poet.model.peft_config) == ["step-2"]  # the old adapter is gone: one adapter in memory
    swapped = {n: p for n, p in poet.model.named_parameters() if "lora_" not in n}
    assert all(swapped[n] is base_weights[n] for n in base_weights)  # the same tensors: the base was not reloaded
    from tangpoem.generate import load_for_generation

    fresh, tokenizer, _ = load_for_generation(cfg, tiny_run / "checkpoint-2")
    rows = demo_rows()
    assert poet.write(DEMO_COUPLETS[0], greedy)[1] == generate(fresh, tokenizer, rows[:1], greedy)[0]


def test_the_app_picks_the_checkpoint_generate_picks(tmp_path, course_dir):
    """checkpoint_index best by a best_metric other than val_loss: the app serves what `tangpoem generate` would."""
    from tangpoem.checkpoints import pick_checkpoint

    values = {"output_dir": str(tmp_path / "run"), "data_dir": str(course_dir), "num_train_data": 32, "max_steps": 8,
              "save_steps": 2, "save_total_limit": 10, "val_size": 8, "learning_rate": 1e-2, "warmup_steps": 0,
              "max_new_tokens": 8}
    train(load_config(REPO / "configs" / "tiny-cpu.yaml", values))
    by_f1 = pick_checkpoint(tmp_path / "run", "best", "char_f1")
    assert by_f1 != pick_checkpoint(tmp_path / "run", "best", "val_loss")  # the two metrics disagree here
    cfg = load_config(REPO / "configs" / "tiny-cpu.yaml", {**values, "checkpoint_index": "best", "best_metric": "char_f1"})
    assert Poet.load(cfg).checkpoint == by_f1


def test_without_a_checkpoint_the_base_model_writes_alone(tmp_path, course_dir):
    cfg = load_config(REPO / "configs" / "tiny-cpu.yaml", {"output_dir": str(tmp_path / "none"), "data_dir": str(course_dir)})
    poet = Poet.load(cfg)
    assert poet.checkpoint is None
    base, tuned = poet.write(DEMO_COUPLETS[2], decoding_settings(cfg, *GREEDY))
    assert tuned is None and isinstance(base, str)
    assert "train first" in marks_html(DEMO_COUPLETS[2], tuned, "fine-tuned")


def test_slider_values_are_checked_by_the_configs_rules(tiny_run, course_dir):
    cfg = tiny_cfg(tiny_run, course_dir)
    assert decoding_settings(cfg, 0.7, 0.9, 20, 16, 2, True, 7).temperature == 0.7
    with pytest.raises(InputError, match="top_p"):
        decoding_settings(cfg, 0.7, 1.5, 20, 16, 2, True, 7)


@pytest.mark.parametrize("verses, name", [
    (["白日依山盡", "黃河入海流", "欲窮千里目", "更上一層樓"], "五言絕句"),
    (["君問歸期未有期", "巴山夜雨漲秋池"] * 4, "七言律詩"),
    (["君問歸期未有期", "巴山夜雨漲秋池"], "七言 2 句"),
    (["白日依山盡", "黃河入海流", "欲窮千里目更"], "3 句, uneven lengths 句長不齊 (5/5/6)"),
    ([], "no verses 沒有詩句"),
])
def test_form_names(verses, name):
    assert form_name(verses) == name


def test_model_text_and_folder_names_are_shown_as_text_not_markup():
    marks = marks_html("白日依山盡，黃河入海流。", "<img src=x onerror=alert(1)>，欲窮千里目", "checkpoint <i>9</i>")
    assert "<img" not in marks and "<i>9" not in marks and "checkpoint &lt;i&gt;9" in marks


def test_a_busy_port_is_refused_before_any_model_loads():
    """refuse_busy_port is what the CLI calls before Poet.load: a port held by another socket is one InputError."""
    from tangpoem.app import refuse_busy_port

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(InputError, match=rf"--port {port}: cannot serve on 127.0.0.1:{port} .*choose another port"):
            refuse_busy_port("127.0.0.1", port)
    refuse_busy_port("127.0.0.1", free_port())  # a free one passes
    refuse_busy_port("127.0.0.1", None)  # gradio picks one


def test_the_page_says_what_is_wrong_with_the_couplet_or_the_settings(tiny_run, course_dir):
    """The public /predict endpoint (with --share anyone may call it): an empty or over-long couplet and an empty
    settings box are one message on the page (gradio.Error), not a traceback; nothing is generated for them."""
    import gradio as gr

    from tangpoem.app import MAX_COUPLET_CHARS, write_poems

    poet = Poet.load(tiny_cfg(tiny_run, course_dir))
    with pytest.raises(gr.Error, match="Type a first couplet"):
        write_poems(poet, "  ", *GREEDY)
    with pytest.raises(gr.Error, match=f"give at most {MAX_COUPLET_CHARS}"):
        write_poems(poet, "白" * (MAX_COUPLET_CHARS + 1), *GREEDY)
    with pytest.raises(gr.Error, match="every decoding setting needs a value"):
        write_poems(poet, DEMO_COUPLETS[0], *GREEDY[:-1], None)
    with pytest.raises(gr.Error, match="top_p"):
        write_poems(poet, DEMO_COUPLETS[0], 0.1, 1.5, *GREEDY[2:])
    base, _, tuned, _ = write_poems(poet, DEMO_COUPLETS[0], *GREEDY)
    assert base and tuned


@pytest.mark.slow
def test_the_cli_serves_until_stopped_and_a_busy_port_is_one_line(tmp_path, course_dir):
    """`tangpoem app` serves the page on the given port (nano-cpu by default); a port in use is exit 2."""
    import urllib.request

    port = free_port()
    command = [sys.executable, "-m", "tangpoem.cli", "app", "--set", f"output_dir={tmp_path / 'none'}",
               "--set", "max_new_tokens=8", "--port", str(port)]
    server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # bounded: the model loads, one example poem, then the server
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(1)
        else:
            pytest.fail("the app did not answer within 240 s")
        assert "tangpoem" in page
        busy = subprocess.run([*command[:-1], str(port)], cwd=REPO, capture_output=True, text=True, timeout=240)
        assert busy.returncode == 2, busy.stderr
        assert busy.stderr.strip().splitlines()[-1].startswith(f"error: --port {port}: cannot serve on 127.0.0.1")
        assert "Running on" not in busy.stdout  # no second server
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_the_screenshot_script_photographs_the_page(tiny_run, course_dir, tmp_path):
    """scripts/screenshot_app.py: the page drawn by headless Chromium (loopback only). Fails, rather than
    skips, without chromium."""
    import shutil

    assert shutil.which("chromium") or shutil.which("chromium-browser"), "install chromium (apt-get install -y chromium)"
    png = tmp_path / "app.png"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "screenshot_app.py"), str(png), "--config",
                           str(REPO / "configs" / "tiny-cpu.yaml"), "--set", f"output_dir={tiny_run}",
                           "--set", f"data_dir={course_dir}", "--set", "max_new_tokens=16"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 50_000  # a blank page is ~10 kB
