"""Pre-train several tangpoem-nano candidates in one run on one CUDA GPU, each within a wall-clock budget.

    PYTHONUNBUFFERED=1 python3 scripts/pretrain_nano.py --corpus .gpu_data/tang_poems.jsonl.gz \\
        --course-rows .gpu_data/Tang_training_data.json --extra-text .gpu_data/Tang_testing_data.json \\
        --out /tmp/nano2 --transfer $OUT --max-seconds 420

The corpus is cleaned and split by scripts/nano_corpus.py (the evaluation uses the same code, so the
same held-out poems); held-out poems never enter pre-training and give the held-out loss. Each
candidate (CANDIDATES below) is written to --out/NAME as a model directory (config.json,
model.safetensors in float16, tokenizer files, generation_config.json, pretrain_log.json); with
--transfer each directory is also tarred into <=15 MiB parts (NAME.tar.00, .01, ...) beside a
summary.json, for machines that return few, small files. Unpack with `cat NAME.tar.* | tar -x`.

Why these choices (docs/nano.md has the study): the first nano (7.2 M parameters, no dropout, 8 epochs)
was still improving on its training data while its held-out loss rose, and after fine-tuning 163 of 300
continuations began 不知何處. So: a cleaned corpus, dropout, documents that do not attend across each
other, the prompt template no longer learned (it was ~half of every request's tokens), fewer requests,
and a learning-rate schedule that follows whichever of steps or seconds runs out first, so a slower GPU
still ends each candidate with a decayed learning rate.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import string
import sys
import tarfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nano_corpus  # noqa: E402  (scripts/nano_corpus.py; it puts the repository root on sys.path)

from tangpoem.tokens import IGNORE_INDEX  # noqa: E402

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
PART_BYTES = 15 * 2**20  # transfer parts stay under a 16 MiB limit per file


@dataclass(frozen=True)
class Candidate:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    dropout: float  # on the embeddings, each residual branch and the attention weights
    request_share: float  # share of titled poems given as a title-to-poem [INST] request in an epoch
    continuation_share: float  # share of poems given as a continuation request (another instruction than the homework's)
    lr: float
    time_share: float  # of the training time left once the data is ready
    why: str
    batch: int = 128  # rows of `block` tokens per step
    block: int = 256
    max_epochs: float = 16.0  # a fast GPU stops here, not at its time budget
    warmup: int = 100


# `tangpoem demo` fine-tunes nano on a 2-core CPU in <= 5 minutes (LoRA steps cost ~1.4x at 10.5 M what
# they cost at 7.2 M), which caps a shipped model near 13 M parameters; nano2-g (17.8 M, the package's
# 40 MB of float16) is a probe of what more capacity would buy, not a model the demo could run. Each
# run's files must come back from the GPU machine (<= 64 MiB in all).
CANDIDATES = [
    Candidate("nano2-a", 256, 6, 8, 4, 768, 0.1, 0.2, 0.0, 3e-3, 0.2,
              "the first nano's shape; cleaned corpus, dropout 0.1, 1 titled poem in 5 a request, template not learned"),
    Candidate("nano2-b", 256, 6, 8, 4, 768, 0.2, 0.2, 0.0, 3e-3, 0.2,
              "as nano2-a with dropout 0.2: is the small model still over-fitting at 0.1?"),
    Candidate("nano2-c", 288, 8, 9, 3, 864, 0.15, 0.2, 0.0, 2e-3, 0.4,
              "10.5 M parameters (8 layers of 288): does capacity help, at the largest size the CPU demo affords?"),
    Candidate("nano2-d", 256, 6, 8, 4, 768, 0.1, 0.2, 0.2, 3e-3, 0.2,
              "as nano2-a, and 1 poem in 5 a request to go on from its first couplet (another instruction than the homework's)"),
    Candidate("nano2-e", 320, 8, 8, 4, 960, 0.15, 0.2, 0.2, 2e-3, 0.35,
              "nano2-d's data with 12.8 M parameters (8 layers of 320) and up to 20 epochs: capacity and time with the task mix",
              max_epochs=20.0),
    Candidate("nano2-f", 256, 6, 8, 4, 768, 0.1, 0.2, 0.4, 3e-3, 0.2,
              "as nano2-d with 2 poems in 5 continuation requests: more of the task beside the homework's"),
    Candidate("nano2-g", 384, 8, 8, 4, 1152, 0.2, 0.2, 0.2, 1.5e-3, 0.45,
              "a probe, too slow for the demo: 17.8 M parameters (the package's 40 MB), nano2-d's data, up to 20 epochs",
              max_epochs=20.0),
]


# ----------------------------------------------------------------------------- tokenizer and model

def build_tokenizer(texts: Iterable[str]) -> Any:
    """One token per character of `texts` and of the prompts (the course's and the title request's),
    plus printable ASCII and newline, with Llama's conventions otherwise: ▁ for spaces, BOS added,
    no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from tangpoem.prompt import INSTRUCTION, SYSTEM_PROMPT

    chars = set(string.printable) | {"▁"} | set(SYSTEM_PROMPT + INSTRUCTION + nano_corpus.TITLE_INSTRUCTION + nano_corpus.CONTINUE_INSTRUCTION)
    for text in texts:
        chars.update(text)
    chars -= set(string.whitespace) - {"\n"}  # spaces become ▁; tabs and CRs are not in poems or the prompt
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + sorted(chars))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=True))
    # No ▁ prefix before the first word: with one token per character a lone "▁" would start every
    # answer, and the homework's no_repeat_ngram_size=3 then forbids it after "[/INST]" (the prompt
    # already holds "INST]▁" from "[INST] <<SYS>>"). Breeze's "▁綺"-style pieces never hit this.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build_model(tokenizer: Any, c: Candidate) -> torch.nn.Module:
    """A Mistral of the candidate's shape, tied embeddings (the vocabulary is ~a third of the weights)."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=c.hidden, intermediate_size=c.intermediate,
        num_hidden_layers=c.layers, num_attention_heads=c.heads, num_key_value_heads=c.kv_heads,
        max_position_embeddings=512, sliding_window=None, tie_word_embeddings=True, attention_dropout=c.dropout,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=None,
    )
    model = MistralForCausalLM(config)
    add_dropout(model, c.dropout)
    return model


def add_dropout(model: torch.nn.Module, p: float) -> None:
    """GPT-2's dropout for a Mistral, which has none but on attention weights: on the embeddings and on
    each residual branch (attention and MLP outputs), in training mode only. Hooks live in this process;
    the saved model is a plain Mistral."""
    def drop(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return F.dropout(output, p, training=module.training)

    model.model.embed_tokens.register_forward_hook(drop)
    for layer in model.model.layers:
        layer.self_attn.o_proj.register_forward_hook(drop)
        layer.mlp.down_proj.register_forward_hook(drop)


def check_document_masking(model: torch.nn.Module, device: torch.device) -> None:
    """Packed documents must not see each other: transformers builds a block-diagonal mask from position
    ids that restart at 0 (no attention mask, no cache). Checked once, since the run depends on it."""
    model.eval()
    a, b = torch.arange(5, 12, device=device), torch.arange(20, 29, device=device)
    with torch.no_grad():
        alone = model(input_ids=b[None], use_cache=False).logits[0]
        packed = model(input_ids=torch.cat([a, b])[None], position_ids=torch.cat([torch.arange(7), torch.arange(9)]).to(device)[None],
                       use_cache=False).logits[0, 7:]
    model.train()
    if not torch.allclose(alone, packed, atol=1e-3, rtol=1e-3):
        raise SystemExit("packed documents attend to each other with this transformers version; stop (results would be wrong)")


# ----------------------------------------------------------------------------- data

def epoch_blocks(docs: nano_corpus.Documents, seed: int, c: Candidate, device: torch.device) -> tuple[torch.Tensor, ...]:
    """One epoch of documents cut into rows of `block` tokens: (input_ids, labels, position_ids), each
    (N, block), on `device`. A document cut at a row's end goes on in the next row (its positions carry on)."""
    arrays = docs.epoch(seed, c.request_share, c.continuation_share)
    n = len(arrays[0]) // c.block
    return tuple(torch.from_numpy(a[: n * c.block]).view(n, c.block).to(device) for a in arrays)


def heldout_batches(tokenizer: Any, poems: list[nano_corpus.Poem], size: int = 64) -> list[dict[str, torch.Tensor]]:
    """Held-out poems as plain text (BOS poem EOS), one per row, padded on the right (pads not scored)."""
    batches = []
    for start in range(0, len(poems), size):
        rows = [[tokenizer.bos_token_id] + tokenizer(p.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                for p in poems[start : start + size]]
        longest = max(map(len, rows))
        ids = torch.full((len(rows), longest), tokenizer.eos_token_id)
        labels = torch.full((len(rows), longest), IGNORE_INDEX)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
            labels[r, 1 : len(row)] = torch.tensor(row[1:])
        batches.append({"input_ids": ids, "labels": labels})
    return batches


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    """Mean loss per scored token (nats per character, EOS included) over the held-out poems."""
    model.eval()
    total = count = 0.0
    for batch in batches:
        ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        with autocast(device):
            logits = model(input_ids=ids, use_cache=False).logits.float()
        total += F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum").item()
        count += (labels[:, 1:] != IGNORE_INDEX).sum().item()
    model.train()
    return total / count


def autocast(device: torch.device) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# ----------------------------------------------------------------------------- one candidate

def learning_rate(c: Candidate, progress: float, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth, over `progress` in [0, 1]."""
    if step < c.warmup:
        return c.lr * (step + 1) / c.warmup
    return c.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_candidate(c: Candidate, tokenizer: Any, docs: nano_corpus.Documents, heldout: list[dict[str, torch.Tensor]],
                    seconds: float, device: torch.device, seed: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train until `seconds` have passed or `max_epochs` are done, whichever comes first; the learning
    rate follows the further along of the two, so it has decayed whichever ends the run."""
    torch.manual_seed(seed)
    model = build_model(tokenizer, c).to(device)
    check_document_masking(model, device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=c.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    ids, labels, positions = epoch_blocks(docs, seed, c, device)
    tokens_per_epoch = ids.numel()
    steps_per_epoch = math.ceil(len(ids) / c.batch)  # the last batch of an epoch may be short
    max_steps = int(c.max_epochs * steps_per_epoch)
    history: list[dict[str, Any]] = []
    started, step, epoch, cursor, progress, next_log = time.perf_counter(), 0, 0, 0, 0.0, 0.0
    model.train()
    while progress < 1.0:
        if cursor >= len(ids):
            epoch, cursor = epoch + 1, 0
            ids, labels, positions = epoch_blocks(docs, seed * 1000 + epoch, c, device)
        batch = {"input_ids": ids[cursor : cursor + c.batch], "labels": labels[cursor : cursor + c.batch],
                 "position_ids": positions[cursor : cursor + c.batch]}
        cursor += c.batch
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(c, progress, step)
        with autocast(device):
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % 20 == 0 or step == max_steps:  # reading the clock needs the GPU to catch up
            elapsed = time.perf_counter() - started
            progress = max(step / max_steps, elapsed / seconds)
            if progress >= next_log or progress >= 1.0:
                record = {"step": step, "epoch": round(step / steps_per_epoch, 2), "train_loss": round(loss.item(), 4),
                          "heldout_loss": round(heldout_loss(model, heldout, device), 4), "seconds": round(elapsed, 1)}
                history.append(record)
                print(f"{c.name} {json.dumps(record)}", flush=True)
                while next_log <= progress:
                    next_log += 0.1
    seconds_used = time.perf_counter() - started
    final = heldout_loss(model, heldout, device)
    log = {"candidate": asdict(c), "parameters": sum(p.numel() for p in model.parameters()), "steps": step,
           "epochs": round(step / steps_per_epoch, 2), "tokens_per_epoch": tokens_per_epoch,
           "stopped_by": "time" if step < max_steps else "max_epochs", "seconds": round(seconds_used, 1),
           "heldout_loss": round(final, 4), "heldout_perplexity": round(math.exp(final), 2), "history": history}
    return model, log


# ----------------------------------------------------------------------------- a quick look at greedy-ish text

@torch.no_grad()
def plain_continuations(model: torch.nn.Module, tokenizer: Any, poems: list[nano_corpus.Poem], device: torch.device) -> dict:
    """Before any fine-tuning: each held-out poem's first couplet as plain text, continued with the
    homework's decoding (temperature 0.1, top-p 0.3, no-repeat 3). How often does the commonest
    4-character opening recur? (The first nano after fine-tuning: 163 of 300 began 不知何處.)"""
    model.eval()
    pad = tokenizer.unk_token_id
    openings = []
    for start in range(0, len(poems), 128):
        prompts = [[tokenizer.bos_token_id] + tokenizer(p.paragraphs[0], add_special_tokens=False)["input_ids"] for p in poems[start : start + 128]]
        longest = max(map(len, prompts))
        ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts], device=device)
        mask = (torch.arange(longest, device=device)[None] >= torch.tensor([longest - len(p) for p in prompts], device=device)[:, None]).long()
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.1, top_p=0.3, top_k=50,
                             no_repeat_ngram_size=3, max_new_tokens=24, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        for row in out[:, longest:]:
            text = tokenizer.decode(row, skip_special_tokens=True)
            openings.append("".join(ch for ch in text if ch not in "，。！？；、：\n ")[:4])
    model.train()
    counts = Counter(o for o in openings if o).most_common(5)  # as benchmarks/nano_heldout.py counts them
    return {"poems": len(openings), "commonest_openings": dict(counts), "empty": openings.count(""),
            "top_share": round(counts[0][1] / len(openings), 3) if counts else 0.0}


# ----------------------------------------------------------------------------- saving and shipping

def save(model: torch.nn.Module, tokenizer: Any, log: dict, directory: Path) -> None:
    """A plain model directory: float16 weights (the package ships them so), no dropout in the config."""
    model.config.attention_dropout = 0.0
    model.to(torch.float16).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (directory / "pretrain_log.json").write_text(json.dumps(log, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def tar_in_parts(directory: Path, transfer: Path) -> list[str]:
    """directory as NAME.tar split into PART_BYTES pieces: NAME.tar.00, NAME.tar.01, ..."""
    whole = transfer / f"{directory.name}.tar"
    with tarfile.open(whole, "w") as tar:
        tar.add(directory, arcname=directory.name)
    data, parts = whole.read_bytes(), []
    whole.unlink()
    for number, start in enumerate(range(0, len(data), PART_BYTES)):
        part = transfer / f"{directory.name}.tar.{number:02d}"
        part.write_bytes(data[start : start + PART_BYTES])
        parts.append(part.name)
    return parts


def environment(device: torch.device) -> dict[str, str]:
    import transformers

    return {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True, help="tang_poems.jsonl or .jsonl.gz")
    parser.add_argument("--course-rows", type=Path, required=True, help="Tang_training_data.json (kept out of the held-out split)")
    parser.add_argument("--extra-text", type=Path, nargs="*", default=[], help="files whose characters join the vocabulary")
    parser.add_argument("--out", type=Path, required=True, help="one model directory per candidate is written here")
    parser.add_argument("--transfer", type=Path, help="also write NAME.tar.NN parts and summary.json here")
    parser.add_argument("--candidates", nargs="*", help="names from CANDIDATES (default: all)")
    parser.add_argument("--max-seconds", type=float, default=420, help="wall clock for the whole run, data preparation included")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--device", default="cuda", help="cpu only for a smoke run")
    parser.add_argument("--smoke", action="store_true", help="tiny models and 2%% of the poems: checks the script, not the model")
    args = parser.parse_args()

    started = time.perf_counter()
    device = torch.device(args.device)
    chosen = [c for c in CANDIDATES if not args.candidates or c.name in args.candidates]
    if not chosen:
        raise nano_corpus.InputError(f"--candidates {args.candidates}: none of {[c.name for c in CANDIDATES]}")
    course_rows = nano_corpus.read_course_rows(args.course_rows)
    cleaning, parts = nano_corpus.prepare(args.corpus, course_rows, first_nano=False)
    pretraining = parts.pretraining[:: 50 if args.smoke else 1]
    extra = [p.read_text(encoding="utf-8") for p in args.extra_text] + [json.dumps(course_rows, ensure_ascii=False)]
    tokenizer = build_tokenizer([p.text + p.title for p in cleaning.poems] + extra)
    docs = nano_corpus.Documents.build(tokenizer, pretraining)
    heldout = heldout_batches(tokenizer, parts.heldout)
    data = {"corpus_records": cleaning.records, "kept_after_cleaning": len(cleaning.poems),
            "pretraining_poems": len(pretraining), "heldout_poems": len(parts.heldout), "heldout_digest": parts.report["heldout_digest"],
            "heldout_forms": parts.report["heldout_forms"], "vocab": len(tokenizer),
            "removed_by_rule": {name: rule["poems"] for name, rule in cleaning.report()["rules"].items()}}
    print(f"data ready in {time.perf_counter() - started:.0f} s: {json.dumps(data, ensure_ascii=False)}", flush=True)

    if args.smoke:
        chosen = [replace(c, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, batch=8, block=128, warmup=2, max_epochs=0.2) for c in chosen]
    reserve = 15.0  # per candidate: held-out loss, plain continuations, saving, tarring
    summary = {**environment(device), "seed": args.seed, "data": data, "candidates": {}}
    for number, c in enumerate(chosen):
        # Each candidate's share of what is left, so that one running over leaves less for the rest.
        left = args.max_seconds - (time.perf_counter() - started) - reserve * (len(chosen) - number)
        seconds = max(10.0, left * c.time_share / sum(other.time_share for other in chosen[number:]))
        print(f"{c.name}: up to {seconds:.0f} s; {c.why}", flush=True)
        model, log = train_candidate(c, tokenizer, docs, heldout, seconds, device, args.seed)
        log["plain_continuations"] = plain_continuations(model, tokenizer, parts.heldout, device)
        log.update(environment=environment(device), data=data, seed=args.seed)
        directory = args.out / c.name
        save(model, tokenizer, log, directory)
        entry = {k: log[k] for k in ("parameters", "steps", "epochs", "stopped_by", "seconds", "heldout_loss", "heldout_perplexity", "plain_continuations")}
        summary["candidates"][c.name] = entry
        summary["seconds"] = round(time.perf_counter() - started, 1)
        if args.transfer:  # written after each candidate: a run cut short still returns what it made
            args.transfer.mkdir(parents=True, exist_ok=True)
            entry["parts"] = tar_in_parts(directory, args.transfer)
            (args.transfer / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{c.name}: {json.dumps(entry, ensure_ascii=False)}", flush=True)
        del model
    print(f"done in {time.perf_counter() - started:.0f} s; model directories in {args.out}", flush=True)


if __name__ == "__main__":
    nano_corpus.exit_on_input_error(main)
