"""`tangpoem app`: try a model in the browser. A first couplet in; the base model's poem and the fine-tuned
adapter's side by side, each with its form, every character's 平仄 and the rhyme marked by tangpoem.grade's
rules (the grader's own functions, so the marks and the grades never disagree).

One model is in memory: the base model with the picked checkpoint's LoRA adapter. The base model's poem is
written with the adapter switched off (peft's `disable_adapter()`); picking another checkpoint swaps the
adapter, never the base. Generation is tangpoem.generate's, with the sliders' values in place of the config's.

    tangpoem app                                # tangpoem-nano on the CPU, http://127.0.0.1:7860
    tangpoem app --config breeze-colab-t4 --share
"""

from __future__ import annotations

import dataclasses
import html
import socket
import threading
from pathlib import Path
from typing import Any

import torch

from tangpoem.checkpoints import checkpoint_step, list_checkpoints
from tangpoem.config import Config
from tangpoem.errors import InputError, RunError
from tangpoem.generate import DEMO_COUPLETS, generate, load_for_generation
from tangpoem.grade.grading import prosody_verses
from tangpoem.grade.normalize import split_verses
from tangpoem.grade.prosody import PoemMarks, poem_marks
from tangpoem.prompt import INSTRUCTION

MAX_COUPLET_CHARS = 64  # a couplet of two 7-character verses is 16 with its marks; a shared link gets no essays
FORM_NAMES = {4: "絕句", 8: "律詩"}
RHYME_BADGES = {"sets": ("韻腳", "the rhyme: verse 2's last character sets it"), "ok": ("押韻 ✓", "rhymes with verse 2"),
                "off": ("不押韻 ✗", "does not rhyme with verse 2"), "unknown": ("韻 ?", "not in the rhyme table")}


# ----------------------------------------------------------------------------- the model

class Poet:
    """The one model in memory (a base model, with the LoRA adapter of `checkpoint` when there is one) and a
    lock, so that one request at a time generates or swaps the adapter."""

    def __init__(self, cfg: Config, model: torch.nn.Module, tokenizer: Any, checkpoint: Path | None) -> None:
        self.cfg, self.model, self.tokenizer, self.checkpoint = cfg, model, tokenizer, checkpoint
        self.lock = threading.Lock()

    @classmethod
    def load(cls, cfg: Config) -> Poet:
        """The base model with the checkpoint `checkpoint_index` picks in output_dir, or alone when it has none."""
        return cls(cfg, *load_for_generation(cfg, "auto" if list_checkpoints(cfg.output_dir) else None, adapter_apart=True))

    def use_checkpoint(self, checkpoint: str | Path) -> None:
        """The adapter of `checkpoint` in place of the current one (the base model stays where it is)."""
        from peft import PeftModel

        checkpoint = Path(checkpoint)
        with self.lock:
            if checkpoint == self.checkpoint:
                return
            if not isinstance(self.model, PeftModel):
                from tangpoem.model import load_adapter

                self.model = load_adapter(self.model, str(checkpoint))
            else:
                old, name = self.model.active_adapter, f"step-{checkpoint_step(checkpoint)}"
                if name == old:
                    name += "-new"
                self.model.load_adapter(str(checkpoint), adapter_name=name)
                self.model.set_adapter(name, inference_mode=True)
                self.model.delete_adapter(old)
            self.checkpoint = checkpoint

    def write(self, couplet: str, settings: Config) -> tuple[str, str | None]:
        """(the base model's continuation, the adapter's or None without one), both decoded with `settings`."""
        from tangpoem.data import Row

        rows = [Row(INSTRUCTION, couplet)]
        with self.lock:
            if self.checkpoint is None:
                return generate(self.model, self.tokenizer, rows, settings, progress=False)[0], None
            with self.model.disable_adapter():
                base = generate(self.model, self.tokenizer, rows, settings, progress=False)[0]
            return base, generate(self.model, self.tokenizer, rows, settings, progress=False)[0]


def decoding_settings(cfg: Config, temperature: float, top_p: float, top_k: int, max_new_tokens: int,
                      no_repeat_ngram_size: int, do_sample: bool, seed: int) -> Config:
    """`cfg` with the sliders' values, validated by the config's own rules (InputError on a bad one)."""
    return dataclasses.replace(cfg, temperature=float(temperature), top_p=float(top_p), top_k=int(top_k),
                               max_new_tokens=int(max_new_tokens), no_repeat_ngram_size=int(no_repeat_ngram_size),
                               do_sample=bool(do_sample), seed=int(seed))


# ----------------------------------------------------------------------------- the marks

def poem_verses(couplet: str, continuation: str) -> tuple[list[str], list[str]]:
    """(the couplet's verses, the continuation's) as the grader's prosody checks read them."""
    return prosody_verses(couplet, split_verses(continuation))


def form_name(verses: list[str]) -> str:
    """The poem's form: 五言絕句, 七言律詩 ..., or what is irregular about it."""
    lengths = [len(v) for v in verses]
    if not lengths:
        return "no verses 沒有詩句"
    if len(set(lengths)) > 1:
        return f"{len(verses)} 句, uneven lengths 句長不齊 ({'/'.join(map(str, lengths))})"
    length = lengths[0]
    words = {5: "五言", 7: "七言"}.get(length, f"{length} 字")
    return f"{words}{FORM_NAMES[len(verses)]}" if length in (5, 7) and len(verses) in FORM_NAMES \
        else f"{words} {len(verses)} 句"


def summary_parts(verses: list[str], marks: PoemMarks) -> list[str]:
    """The poem in three short phrases: its form, how many checked characters fit the 平仄 pattern, how
    many even verses rhyme."""
    chars = [m for v in marks.verses for m in v.chars]
    known = [m for m in chars if m.fits is not None]
    rhymes = [v.rhyme for v in marks.verses if v.rhyme in ("ok", "off")]
    parts = [form_name(verses)]
    parts.append(f"平仄 {sum(m.fits for m in known)}/{len(known)} fit 合律 · {marks.pattern}" if marks.pattern
                 else "平仄: no standard pattern for this verse length")
    if rhymes:
        parts.append(f"押韻 {rhymes.count('ok')}/{len(rhymes)} rhyme · {'、'.join(marks.rhyme_groups) or '?'}")
    return parts


def _char_html(char: Any) -> str:
    if char.wanted is None:
        kind, why = "free", "not checked (一三五不論, or a verse of another length)"
    elif char.fits is None:
        kind, why = "unknown", f"should be {char.wanted}; not in the rhyme table"
    else:
        kind, why = ("fit" if char.fits else "off"), f"should be {char.wanted}"
    tone = char.tones or "?"
    title = html.escape(f"{char.char}: {tone}; {why}", quote=True)
    return (f'<span class="ch {kind}" title="{title}" data-tone="{html.escape(tone)}" '
            f'data-wanted="{char.wanted or ""}"><b>{html.escape(char.char)}</b><i>{html.escape(tone)}</i></span>')


def marks_html(couplet: str, continuation: str | None, heading: str) -> str:
    """The whole poem, one verse a line: each character with its tone (green: fits the pattern, red: breaks
    it, grey: not in the table, plain: a free position), each even verse's rhyme, and a summary line."""
    title = f"<h3>{html.escape(heading)}</h3>"
    if continuation is None:
        return title + '<p class="note">no fine-tuned adapter yet: train first, then pick its checkpoint above</p>'
    given, written = poem_verses(couplet, continuation)
    verses = [*given, *written]
    marks = poem_marks(verses)
    lines = []
    for index, verse in enumerate(marks.verses):
        badge = ""
        if verse.rhyme:
            text, why = RHYME_BADGES[verse.rhyme]
            badge = f'<span class="rhyme {verse.rhyme}" title="{why}">{text}</span>'
        if marks.pattern and len(verse.chars) != len(verses[0]):
            badge += (f'<span class="rhyme skipped" title="the poem\'s verses have {len(verses[0])} characters">'
                      f'{len(verse.chars)} 字: 平仄 not checked</span>')
        role = "given" if index < len(given) else "written"
        chars = "".join(_char_html(c) for c in verse.chars)
        lines.append(f'<div class="verse {role}"><span class="no">{index + 1}</span>{chars}{badge}</div>')
    if not written:
        lines.append('<p class="note">the model wrote no verse after the couplet</p>')
    summary = "".join(f'<span class="tag">{html.escape(part)}</span>' for part in summary_parts(verses, marks))
    return f'{title}<p class="summary">{summary}</p><div class="poem">{"".join(lines)}</div>'



LEGEND = """<div class="legend">
<span class="item"><span class="ch fit"><b>字</b><i>平</i></span> fits the 平仄 pattern 合律</span>
<span class="item"><span class="ch off"><b>字</b><i>仄</i></span> breaks it 失律 (the pattern wants the other tone)</span>
<span class="item"><span class="ch free"><b>字</b><i>平</i></span> free position, not checked 不論</span>
<span class="item"><span class="ch unknown"><b>字</b><i>?</i></span> not in the 平水韻 table</span>
<span class="item">平仄 under a character: it has both readings (多音字)</span>
<span class="item">faded verses 1–2: the couplet you gave 上聯 · hover a character for details</span>
</div>"""

MARKS_CSS = """
h3 { margin: 0 0 4px 0; font-size: 1.05rem; }
.summary { margin: 0 0 10px 0; display: flex; flex-wrap: wrap; gap: 6px; }
.tag { font-size: 0.8rem; padding: 2px 8px; border-radius: 6px; background: var(--background-fill-secondary);
       border: 1px solid var(--border-color-primary); }
.note { color: var(--body-text-color-subdued); font-style: italic; }
.verse { display: flex; flex-wrap: wrap; align-items: center; gap: 3px; margin: 3px 0; }  /* a long verse wraps */
.no { width: 1.6em; text-align: right; margin-right: 6px; font-size: 0.8rem; color: var(--body-text-color); }
.verse.given .no { color: #9ca3af; }
.verse.given .ch { opacity: 0.72; }
.ch { display: inline-flex; flex-direction: column; align-items: center; min-width: 2em; padding: 2px 1px;
      border-radius: 5px; border: 1px solid transparent; }
.ch b { font-size: 1.45rem; font-weight: 500; line-height: 1.2; }
.ch i { font-style: normal; font-size: 0.7rem; color: #6b7280; }
.ch.fit, .ch.off, .ch.unknown { color: #111827; }
.ch.fit { background: #dcfce7; border-color: #86efac; }
.ch.off { background: #fee2e2; border-color: #fca5a5; }
.ch.off i { color: #b91c1c; font-weight: 600; }
.ch.unknown { background: #f3f4f6; border-style: dashed; border-color: #d1d5db; }
.rhyme { margin-left: 8px; font-size: 0.75rem; padding: 1px 6px; border-radius: 9px; white-space: nowrap; }
.rhyme.sets { background: #dbeafe; color: #1e40af; }
.rhyme.ok { background: #dcfce7; color: #166534; }
.rhyme.off { background: #fee2e2; color: #991b1b; }
.rhyme.unknown, .rhyme.skipped { background: #f3f4f6; color: #4b5563; }
.legend { font-size: 0.8rem; display: flex; flex-wrap: wrap; align-items: center; gap: 6px 18px; }
.legend .item { display: inline-flex; align-items: center; gap: 5px; white-space: nowrap; }
.legend .ch b { font-size: 0.95rem; }
"""


# ----------------------------------------------------------------------------- the page

def checkpoint_choices(cfg: Config) -> list[tuple[str, str]]:
    """(label, path) of each checkpoint in output_dir, oldest first."""
    return [(f"{p.name} (step {checkpoint_step(p)})", str(p)) for p in list_checkpoints(cfg.output_dir)]


def model_line(poet: Poet) -> str:
    adapter = f"`{poet.checkpoint}`" if poet.checkpoint else f"none yet (no checkpoint in `{poet.cfg.output_dir}`)"
    device = next(poet.model.parameters()).device
    return f"**model** `{poet.cfg.model_name_or_path}` on {device.type} · **adapter** {adapter}"


def write_poems(poet: Poet, couplet: str, *sliders: Any) -> tuple[str, str, str, str]:
    """(base poem, its marks as HTML, fine-tuned poem, its marks): the `/predict` endpoint."""
    import gradio as gr

    couplet = " ".join((couplet or "").split())
    if not couplet:
        raise gr.Error("Type a first couplet 請輸入上聯, e.g. " + DEMO_COUPLETS[0])
    if len(couplet) > MAX_COUPLET_CHARS:
        raise gr.Error(f"The couplet has {len(couplet)} characters; give at most {MAX_COUPLET_CHARS}: two verses")
    try:
        settings = decoding_settings(poet.cfg, *sliders)
    except InputError as e:
        raise gr.Error(str(e)) from None
    except (TypeError, ValueError):  # a box left empty
        raise gr.Error("every decoding setting needs a value; the seed is a whole number") from None
    base, tuned = poet.write(couplet, settings)
    tuned_heading = f"fine-tuned 微調後 ({poet.checkpoint.name})" if poet.checkpoint else "fine-tuned 微調後"
    return (base, marks_html(couplet, base, "base model 原模型 (adapter off)"),
            tuned or "", marks_html(couplet, tuned, tuned_heading))


def build_app(poet: Poet, first_poems: bool = True) -> Any:
    """The page: a couplet box, the decoding sliders, the checkpoint picker and the two poems; with
    `first_poems`, the first demo couplet's poems are written once now, so the page opens with an example."""
    try:
        import gradio as gr
    except ImportError:
        raise RunError("the app needs gradio: pip install 'tangpoem[app]'") from None

    cfg = poet.cfg
    start = [cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_new_tokens, cfg.no_repeat_ngram_size, cfg.do_sample, cfg.seed]
    shown = write_poems(poet, DEMO_COUPLETS[0], *start) if first_poems else ("", "", "", "")
    with gr.Blocks(title="tangpoem · 唐詩續寫", analytics_enabled=False) as app:
        gr.Markdown("## 唐詩續寫 Tang poem writer\nGive the first couplet 上聯; the base model and the fine-tuned "
                    "adapter each write the rest. Same decoding, same seed, one model in memory.")
        status = gr.Markdown(model_line(poet))
        with gr.Row(equal_height=True):
            couplet = gr.Textbox(label="first couplet 上聯", value=DEMO_COUPLETS[0], scale=5, max_length=MAX_COUPLET_CHARS)
            button = gr.Button("寫詩 Write", variant="primary", scale=1)
        gr.Examples([[c] for c in DEMO_COUPLETS], inputs=[couplet], label="the homework's demo couplets 示範上聯")
        with gr.Accordion("decoding 解碼 (the config's values to start with)", open=True):
            with gr.Row():
                sliders = [
                    gr.Slider(0.05, 2.0, start[0], step=0.05, label="temperature", info="< 1 safer, > 1 wilder"),
                    gr.Slider(0.05, 1.0, start[1], step=0.05, label="top-p", info="sample among the likeliest tokens, up to p"),
                    gr.Slider(0, 200, start[2], step=1, label="top-k", info="sample among the k likeliest (0: off)"),
                ]
            with gr.Row():
                sliders += [
                    gr.Slider(8, 256, start[3], step=8, label="max new tokens", info="the longest answer"),
                    gr.Slider(0, 6, start[4], step=1, label="no-repeat n-gram", info="never repeat n tokens in a row (0: off)"),
                ]
                seed = gr.Number(start[6], precision=0, label="seed", info="the same seed, the same poems")
            sample = gr.Checkbox(start[5], label="sample (off: greedy; then temperature, top-p and top-k do nothing)")
            sliders += [sample, seed]
        with gr.Row(equal_height=False):
            choices = checkpoint_choices(cfg)
            picker = gr.Dropdown(choices, value=str(poet.checkpoint) if poet.checkpoint else None, scale=4,
                                 label=f"checkpoint (the adapter) in {cfg.output_dir}", interactive=bool(choices),
                                 info=None if choices else "none yet: train first (tangpoem train), then ↻")
            refresh = gr.Button("↻ list again", scale=1, size="sm", variant="secondary")
        gr.HTML(LEGEND, css_template=MARKS_CSS)
        with gr.Row(equal_height=False):
            outputs = []
            for number, side in enumerate(("base", "tuned")):
                with gr.Column():
                    marks = gr.HTML(shown[2 * number + 1], css_template=MARKS_CSS, elem_id=f"{side}-marks")
                    text = gr.Textbox(shown[2 * number], label="as written 原文", lines=2, buttons=["copy"],
                                      elem_id=f"{side}-text")
                    outputs += [text, marks]
        inputs = [couplet, *sliders]
        button.click(lambda *a: write_poems(poet, *a), inputs, outputs, api_name="predict")
        couplet.submit(lambda *a: write_poems(poet, *a), inputs, outputs, api_name=False)
        picker.input(lambda path: _switch(poet, path), picker, status, api_name="use_checkpoint")
        refresh.click(lambda: _refreshed(poet), None, picker, api_name=False)
    return app


def _switch(poet: Poet, path: str | None) -> str:
    if path:
        poet.use_checkpoint(path)
    return model_line(poet)


def _refreshed(poet: Poet) -> Any:
    import gradio as gr

    choices = checkpoint_choices(poet.cfg)
    return gr.Dropdown(choices=choices, value=str(poet.checkpoint) if poet.checkpoint else None, interactive=bool(choices),
                       info=None if choices else "none yet: train first (tangpoem train), then ↻")


def refuse_busy_port(host: str, port: int | None) -> None:
    """A port another program holds, said before minutes of loading a model rather than after."""
    if port is None:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            raise InputError(f"--port {port}: cannot serve on {host}:{port} ({e.strerror}); choose another port") from None


def launch(app: Any, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           block: bool = True) -> tuple[Any, str, str | None]:
    """Serve `app`; (the app, its local URL, the public share URL or None). `block`: until Ctrl+C; otherwise
    the server runs in a thread until `app.close()` (a notebook's cell returns at once)."""
    try:
        _, local_url, share_url = app.launch(server_name=host, server_port=port, share=share, ssr_mode=False,
                                             prevent_thread_lock=not block, footer_links=["api"])
    except OSError as e:  # gradio's "Cannot find empty port in range: 7860-7860"
        raise InputError(f"--port {port}: cannot serve on {host}:{port} ({e}); choose another port") from None
    return app, local_url, share_url
