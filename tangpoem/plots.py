"""Figures for the notebooks: each function takes plain data and returns a matplotlib Figure.

Figures are built with `matplotlib.figure.Figure` (not pyplot), so nothing is shown or kept in global
state until a notebook displays it. `save_png` writes one atomically and returns a `SavedFigure`, which
Jupyter shows as the PNG itself (a bare Figure has no PNG formatter without pyplot's inline backend).
Chinese labels use the CJK font shipped in tangpoem/fonts (a subset of Noto Sans CJK TC, SIL OFL), registered
by path: it does not depend on the machine's fonts or on matplotlib's font cache.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tangpoem.io import atomic_write_bytes

FONT_FILE = Path(__file__).resolve().parent / "fonts" / "TangpoemSansCJK-Regular.otf"  # scripts/make_cjk_font.py
FONT_FAMILY = "Tangpoem Sans CJK"
FALLBACK_FAMILY = "DejaVu Sans"  # matplotlib's own font: any character the subset lacks
KEPT, DROPPED = "#2b7bba", "#d0d0d0"  # kept / filtered-out tokens
LEARNED, MASKED = "#f4a259", "#e8eef4"  # tokens the loss sees / tokens it ignores
SMOOTHING = 0.9  # the loss curve's exponential moving average (TensorBoard's default weight)


def use_cjk_font() -> str:
    """Register the shipped CJK font by path and make it the figures' first font, DejaVu Sans second
    (matplotlib takes each glyph from the first font that has it). Global, because tick labels are laid
    out when a figure is drawn, which may be after our functions return."""
    from matplotlib import font_manager

    if not any(Path(f.fname) == FONT_FILE for f in font_manager.fontManager.ttflist):
        font_manager.fontManager.addfont(str(FONT_FILE))
    matplotlib.rcParams["font.family"] = [FONT_FAMILY, FALLBACK_FAMILY]
    matplotlib.rcParams["axes.unicode_minus"] = False  # the CJK font's minus sign is the ASCII one
    return FONT_FAMILY


def _label(token: str) -> str:
    """A token as a readable label: newlines escaped, blank tokens quoted so they stay visible."""
    token = token.replace("\n", "\\n")
    return f"'{token}'" if not token.strip() else token


# ----------------------------------------------------------------------------- decoding

def temperature_figure(top_labels: Sequence[str], probs_by_temperature: Mapping[float, Sequence[float]]) -> Figure:
    """One bar chart per temperature: the same next-token candidates, re-weighted by softmax(logits / T).

    `probs_by_temperature[T][i]` is the probability of `top_labels[i]` at temperature T.
    """
    temps = list(probs_by_temperature)
    use_cjk_font()
    fig = Figure(figsize=(3.2 * len(temps), 3.4), layout="constrained")
    axes = fig.subplots(1, len(temps), sharey=True, squeeze=False)[0]
    x = range(len(top_labels))
    for ax, t in zip(axes, temps):
        probs = list(probs_by_temperature[t])
        ax.bar(x, probs, color=KEPT)
        ax.set_xticks(list(x), [_label(s) for s in top_labels], fontsize=9)
        ax.set_title(f"T = {t:g}   (top-1 p = {probs[0]:.2f})")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("probability 機率")
    fig.suptitle("Temperature 溫度: the same next-token distribution, sharpened (T < 1) or flattened (T > 1)")
    return fig


def top_k_top_p_figure(top_labels: Sequence[str], probs: Sequence[float], kept_top_k: Sequence[bool],
                       kept_top_p: Sequence[bool], top_k: int, top_p: float) -> Figure:
    """Two panels over the same sorted candidates: which tokens top-k keeps, and which top-p keeps
    (with the cumulative probability that top-p cuts at)."""
    x = list(range(len(top_labels)))
    cumulative = [sum(probs[: i + 1]) for i in x]
    use_cjk_font()
    fig = Figure(figsize=(12, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.bar(x, probs, color=[KEPT if k else DROPPED for k in kept_top_k])
    left.set_title(f"top-k = {top_k}: keep the {top_k} most likely tokens ({sum(kept_top_k)} of {len(x)} shown kept)")
    right.bar(x, probs, color=[KEPT if k else DROPPED for k in kept_top_p])
    right.plot(x, cumulative, color="black", marker=".", linewidth=1, label="cumulative 累積機率")
    right.axhline(top_p, color="crimson", linestyle="--", linewidth=1, label=f"top_p = {top_p:g}")
    right.set_title(f"top-p = {top_p:g}: keep the fewest tokens whose mass reaches p ({sum(kept_top_p)} of {len(x)} kept)")
    right.legend(loc="upper left")
    for ax in (left, right):
        ax.set_xticks(x, [_label(s) for s in top_labels], fontsize=9)
    left.set_ylim(0, max(probs, default=1) * 1.15)  # a flat distribution's bars stay visible
    right.set_ylim(0, max([*cumulative, top_p], default=1) * 1.25)  # room for the legend above the curve
    left.set_ylabel("probability 機率")
    right.set_ylabel("probability 機率 / cumulative 累積")
    fig.suptitle("Blue 藍: may be sampled 可被抽樣   Grey 灰: filtered out 被濾掉")
    return fig


# ----------------------------------------------------------------------------- data

def _integer_bins(values: Sequence[int], most: int = 60) -> list[float]:
    """Bins centred on whole numbers (lengths are counts), at most `most` of them."""
    low, high = min(values, default=0), max(values, default=1)
    width = max(1, -(-(high - low + 1) // most))
    return [low - 0.5 + i * width for i in range((high - low) // width + 2)]


def length_figure(answer_chars: Sequence[int], row_tokens: Sequence[int], cutoff_len: int) -> Figure:
    """Histograms: characters per answer (the rest of the poem), and tokens per training row against cutoff_len."""
    use_cjk_font()
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.hist(answer_chars, bins=_integer_bins(answer_chars), color=KEPT)
    left.set_title(f"answer length 答案長度 (characters), {len(answer_chars)} rows")
    left.set_xlabel("characters 字數")
    left.set_ylabel("rows 筆數")
    right.hist(row_tokens, bins=_integer_bins(row_tokens, most=40), color=LEARNED)
    right.axvline(cutoff_len, color="crimson", linestyle="--", label=f"cutoff_len = {cutoff_len}")
    over = sum(n > cutoff_len for n in row_tokens)
    right.set_title(f"prompt + answer 提示+答案 (tokens); {over} rows over cutoff_len")
    right.set_xlabel("tokens")
    right.legend()
    return fig


def label_mask_figure(tokens: Sequence[str], learned: Sequence[bool], per_line: int = 16) -> Figure:
    """A training row drawn token by token: orange tokens are learned (in the loss), pale ones are masked."""
    lines = max(1, -(-len(tokens) // per_line))
    use_cjk_font()
    fig = Figure(figsize=(per_line * 0.62, 0.5 * lines + 0.9), layout="constrained")
    ax = fig.subplots()
    for i, (token, is_learned) in enumerate(zip(tokens, learned)):
        row, col = divmod(i, per_line)
        ax.add_patch(matplotlib.patches.Rectangle((col + 0.04, -row - 0.92), 0.92, 0.84,
                                                  facecolor=LEARNED if is_learned else MASKED,
                                                  edgecolor="white"))
        ax.text(col + 0.5, -row - 0.5, _label(token)[:6], ha="center", va="center", fontsize=8)
    ax.set_xlim(0, per_line)
    ax.set_ylim(-lines, 0)
    ax.axis("off")
    n_learned = sum(learned)
    ax.set_title(f"label mask 標籤遮罩: {n_learned} learned 計入損失 (orange 橘)、"
                 f"{len(tokens) - n_learned} masked = IGNORE_INDEX 不計 (pale 淺色)")
    return fig


# ----------------------------------------------------------------------------- training

def smoothed(values: Sequence[float], weight: float = SMOOTHING) -> list[float]:
    """Exponential moving average with TensorBoard's bias correction: the first points are not pulled
    towards zero, and a constant series stays constant."""
    out, average = [], 0.0
    for n, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**n))
    return out


def loss_figure(history: Sequence[Mapping[str, float]]) -> Figure:
    """Training loss per optimizer step (faint) and its moving average (bold), with the learning-rate
    schedule on a second axis. The title quotes the smoothed loss: a single step's loss is noisy."""
    steps = [h["step"] for h in history]
    losses = [h["loss"] for h in history]
    trend = smoothed(losses)
    use_cjk_font()
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(steps, losses, marker="." if len(steps) < 50 else None, color=KEPT, alpha=0.35, linewidth=1,
            label="loss per step 每步")
    ax.plot(steps, trend, color=KEPT, linewidth=2.2, label=f"smoothed 平滑 (EMA {SMOOTHING:g})")
    ax.set_xlabel("optimizer step 更新步數")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_ylabel("training loss 訓練損失", color=KEPT)
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [h["learning_rate"] for h in history], color="grey", linestyle=":", label="learning rate 學習率")
    lr_ax.set_ylabel("learning rate 學習率", color="grey")
    if history:
        fig.legend(loc="outside lower center", ncols=3, fontsize=8)
        ax.set_title(f"loss curve 損失曲線: smoothed loss {trend[-1]:.3f} at step {steps[-1]} "
                     f"(from {trend[0]:.3f}; last step alone {losses[-1]:.3f})")
    else:
        ax.set_title("loss curve 損失曲線: no steps recorded")
    return fig


SCORE_COLOURS = {"char_f1": "#2b7bba", "form": "#6a994e", "pingze": "#f4a259", "rhyme": "#bc4749"}


def validation_figure(history: Sequence[Mapping[str, float]], evaluations: Sequence[Mapping[str, float | None]]) -> Figure:
    """Left: the training loss per step with the validation loss at each save; right: the validation poems'
    scores at each save (char F1, form, 平仄, rhyme; higher is better)."""
    use_cjk_font()
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot([h["step"] for h in history], [h["loss"] for h in history], color=KEPT, alpha=0.6, label="training 訓練")
    left.plot([e["step"] for e in evaluations], [e["val_loss"] for e in evaluations], color="crimson", marker="o",
              label="validation 驗證")
    left.set_xlabel("optimizer step 更新步數")
    left.set_ylabel("loss 損失")
    left.legend()
    for name, colour in SCORE_COLOURS.items():
        points = [(e["step"], e[name]) for e in evaluations if e.get(name) is not None]
        right.plot([s for s, _ in points], [v for _, v in points], color=colour, marker="o", label=name)
    right.set_ylim(0, 1.02)
    right.set_xlabel("optimizer step 更新步數")
    right.set_ylabel("score 分數 (higher is better)")
    if evaluations:
        left.set_title(f"loss: last validation {evaluations[-1]['val_loss']:.3f} at step {evaluations[-1]['step']}")
        right.set_title(f"validation poems 驗證詩: {len(evaluations)} evaluations")
        right.legend(loc="lower right")
    else:
        left.set_title("loss: no validation rows (val_size 0)")
        right.set_title("no validation: set val_size (e.g. 64) to see these")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


@dataclass(frozen=True)
class SavedFigure:
    """A figure written to `path`; Jupyter shows it as the PNG (the same bytes as the file)."""

    path: Path
    png: bytes

    def _repr_png_(self) -> bytes:
        return self.png

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"<figure saved to {self.path}>"


def save_png(fig: Figure, path: str | os.PathLike) -> SavedFigure:
    """Write the figure as a PNG (atomically, so a reader never sees half a file); the notebook cell's last
    line, so that the figure shows where it is made."""
    use_cjk_font()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    png = buffer.getvalue()
    return SavedFigure(atomic_write_bytes(path, png), png)
