"""Figures for the notebooks: each function takes plain data and returns a matplotlib Figure.

Figures are built with `matplotlib.figure.Figure` (not pyplot), so nothing is shown or kept in
global state until a notebook displays it; `save_png` writes one atomically. Chinese labels need a
CJK font: WenQuanYi Micro Hei or Noto Sans CJK when installed, else matplotlib's default (boxes).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tangpoem.io import atomic_write_bytes

CJK_FONTS = ("WenQuanYi Micro Hei", "Noto Sans CJK TC", "Noto Sans CJK JP", "Noto Sans CJK SC", "Microsoft JhengHei")
KEPT, DROPPED = "#2b7bba", "#d0d0d0"  # kept / filtered-out tokens
LEARNED, MASKED = "#f4a259", "#e8eef4"  # tokens the loss sees / tokens it ignores


def cjk_font() -> str | None:
    """The first installed CJK font of CJK_FONTS, or None."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FONTS if name in installed), None)


def use_cjk_font() -> str | None:
    """Put the installed CJK font first in matplotlib's sans-serif list (fonts are looked up when a
    figure is drawn, which in Jupyter is after our functions return, so this must be global)."""
    font = cjk_font()
    if font:
        rest = [f for f in matplotlib.rcParams["font.sans-serif"] if f != font]
        matplotlib.rcParams["font.sans-serif"] = [font, *rest]
        matplotlib.rcParams["font.family"] = "sans-serif"
    matplotlib.rcParams["axes.unicode_minus"] = False  # the CJK fonts lack U+2212
    return font


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
    left, right = fig.subplots(1, 2, sharey=True)
    left.bar(x, probs, color=[KEPT if k else DROPPED for k in kept_top_k])
    left.set_title(f"top-k = {top_k}: keep the {top_k} most likely tokens ({sum(kept_top_k)} shown kept)")
    right.bar(x, probs, color=[KEPT if k else DROPPED for k in kept_top_p])
    right.plot(x, cumulative, color="black", marker=".", linewidth=1, label="cumulative 累積機率")
    right.axhline(top_p, color="crimson", linestyle="--", linewidth=1, label=f"top_p = {top_p:g}")
    right.set_title(f"top-p = {top_p:g}: keep the fewest tokens whose mass reaches p ({sum(kept_top_p)} kept)")
    right.legend(loc="center right")
    for ax in (left, right):
        ax.set_xticks(x, [_label(s) for s in top_labels], fontsize=9)
        ax.set_ylim(0, 1.05)
    left.set_ylabel("probability 機率")
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

def loss_figure(history: Sequence[Mapping[str, float]]) -> Figure:
    """Training loss per optimizer step, with the learning-rate schedule on a second axis."""
    steps = [h["step"] for h in history]
    use_cjk_font()
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(steps, [h["loss"] for h in history], marker="." if len(steps) < 50 else None, color=KEPT)
    ax.set_xlabel("optimizer step 更新步數")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_ylabel("training loss 訓練損失", color=KEPT)
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [h["learning_rate"] for h in history], color="grey", linestyle=":")
    lr_ax.set_ylabel("learning rate 學習率", color="grey")
    ax.set_title(f"loss curve 損失曲線: {len(steps)} steps, last loss {history[-1]['loss']:.3f}" if history
                 else "loss curve: no steps recorded")
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


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Write the figure as a PNG (atomically, so a reader never sees half a file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())
