"""Pre-train tangpoem-nano on the 全唐詩 corpus (run on a CUDA GPU; a few minutes on one H100).

    python scripts/pretrain_nano.py --corpus ../shared/data/quan-tang-shi/tang_poems.jsonl \
        --extra-text ../shared/data/GenAI-Hw5/Tang_testing_data.json --out tangpoem/nano_model

Our held-out poems (tangpoem.nano.is_heldout) never enter training; they give the validation loss
(on their plain text) and, later, the before/after fine-tuning evaluation. Training documents are
built by tangpoem.nano.pretraining_document (plain poems, and title-to-poem requests in the course's
[INST] format) and packed into blocks. The course's own task is never in pre-training.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

from tangpoem import nano


def open_corpus(path: Path) -> Path:
    """The corpus may travel gzipped; nano.read_corpus reads plain JSON Lines."""
    if path.suffix != ".gz":
        return path
    plain = Path(tempfile.mkdtemp()) / path.stem
    with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return plain


def pack(docs: list[list[int]], block: int, generator: random.Random) -> torch.Tensor:
    """Shuffle documents, concatenate, cut into (N, block) rows."""
    order = list(range(len(docs)))
    generator.shuffle(order)
    stream = [t for i in order for t in docs[i]]
    n = len(stream) // block
    return torch.tensor(stream[: n * block], dtype=torch.long).view(n, block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--extra-text", type=Path, nargs="*", default=[], help="files whose characters join the vocabulary")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=300, help="stop early (and say so) past this")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--instruct-share", type=float, default=0.5, help="share of title-to-poem [INST] documents")
    parser.add_argument("--device", default="cuda", help="cpu only for a smoke run of the script")
    args = parser.parse_args()

    from transformers import MistralForCausalLM

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    device = torch.device(args.device)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")  # noqa: E731
    poems = list(nano.read_corpus(open_corpus(args.corpus)))
    extra = [p.read_text(encoding="utf-8") for p in args.extra_text]
    tokenizer = nano.build_tokenizer([p.text for p in poems] + [p.title for p in poems] + extra)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id

    def document(poem: nano.Poem) -> list[int]:
        return nano.pretraining_document(tokenizer, poem, rng, args.instruct_share)

    train_docs = [document(p) for p in poems if not nano.is_heldout(p)]
    val_docs = [[bos] + tokenizer(p.text, add_special_tokens=False)["input_ids"] + [eos] for p in poems if nano.is_heldout(p)]
    val = pack(val_docs, args.block, random.Random(0)).to(device)
    print(f"{len(poems)} poems: {len(train_docs)} for training, {len(val_docs)} held out; vocab {len(tokenizer)}")

    model = MistralForCausalLM(nano.model_config(tokenizer)).to(device)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.2f} M parameters")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda",
    )

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to a tenth
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    @torch.no_grad()
    def val_loss() -> float:
        model.eval()
        losses = []
        for i in range(0, len(val), args.batch):
            x = val[i : i + args.batch]
            with autocast():
                losses.append(model(input_ids=x, labels=x).loss.item())
        model.train()
        return sum(losses) / len(losses)

    history, epoch, data, cursor = [], 0, pack(train_docs, args.block, rng), 0
    started = time.perf_counter()
    model.train()
    step = 0
    for step in range(args.steps):
        if cursor + args.batch > len(data):
            epoch, cursor = epoch + 1, 0
            data = pack([document(p) for p in poems if not nano.is_heldout(p)], args.block, rng)
        x = data[cursor : cursor + args.batch].to(device, non_blocking=True)
        cursor += args.batch
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        with autocast():
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 250 == 0 or step == args.steps - 1:
            record = {"step": step, "epoch": epoch, "train_loss": loss.item(), "val_loss": val_loss(),
                      "seconds": round(time.perf_counter() - started, 1)}
            history.append(record)
            print(json.dumps(record))
        if time.perf_counter() - started > args.max_seconds:
            print(f"stopping early at step {step}: --max-seconds {args.max_seconds} reached")
            break
    seconds = time.perf_counter() - started
    final_val = val_loss()

    args.out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(args.out, safe_serialization=True)  # fp16 on disk: ~14 MB
    tokenizer.save_pretrained(args.out)
    log = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__, "python": platform.python_version(),
        "parameters": params, "vocab": len(tokenizer), "steps": step + 1, "epochs": epoch, "block": args.block,
        "batch": args.batch, "lr": args.lr, "instruct_share": args.instruct_share, "seconds": round(seconds, 1), "final_val_loss": final_val,
        "train_docs": len(train_docs), "heldout_docs": len(val_docs), "history": history,
    }
    (args.out / "pretrain_log.json").write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")
    print(f"done: {step + 1} steps in {seconds:.0f} s, held-out loss {final_val:.3f}; wrote {args.out}")


if __name__ == "__main__":
    main()
