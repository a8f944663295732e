"""scripts/pretrain_nano.py on a CPU with tiny candidates: documents in an epoch, document masking,
the schedule, a short training run, and the directory that comes back in parts."""

from __future__ import annotations

import io
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import nano_corpus  # noqa: E402
import pretrain_nano  # noqa: E402
from nano_corpus import Poem  # noqa: E402

from tangpoem.tokens import IGNORE_INDEX  # noqa: E402

POEMS = [
    Poem(0, "王之渙", "登鸛雀樓", ("白日依山盡，黃河入海流。", "欲窮千里目，更上一層樓。")),
    Poem(1, "孟浩然", "春曉", ("春眠不覺曉，處處聞啼鳥。", "夜來風雨聲，花落知多少。")),
    Poem(2, "", "", ("千山鳥飛絕，萬徑人蹤滅。", "孤舟蓑笠翁，獨釣寒江雪。")),  # untitled: never a request
]
TINY = replace(pretrain_nano.CANDIDATES[0], name="tiny", hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64,
               batch=4, block=16, warmup=1, max_epochs=3)


@pytest.fixture(scope="module")
def tokenizer():
    return pretrain_nano.build_tokenizer([p.title + p.text for p in POEMS])


@pytest.fixture(scope="module")
def documents(tokenizer):
    return nano_corpus.Documents.build(tokenizer, POEMS)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_an_epoch_holds_every_poem_once(tokenizer, documents, share: float) -> None:
    ids, labels, positions = documents.epoch(seed=3, request_share=share)
    starts = [i for i, p in enumerate(positions) if p == 0]
    assert len(starts) == len(POEMS) and (ids[starts] == tokenizer.bos_token_id).all()
    assert (labels[starts] == IGNORE_INDEX).all()  # BOS is never learned
    text = tokenizer.decode(ids)
    for poem in POEMS:
        assert text.count(poem.text) == 1
    requests = text.count(nano_corpus.TITLE_INSTRUCTION)
    assert requests == (2 if share == 1.0 else 0)  # the two titled poems
    learned = tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    assert nano_corpus.TITLE_INSTRUCTION not in learned and "[INST]" not in learned  # the prompt is read, not learned
    assert all(poem.text in learned for poem in POEMS)


def test_continuation_requests_learn_only_the_rest_of_the_poem(tokenizer, documents) -> None:
    ids, labels, positions = documents.epoch(seed=5, request_share=0.0, continuation_share=1.0)
    assert tokenizer.decode(ids).count(nano_corpus.CONTINUE_INSTRUCTION) == len(POEMS)
    learned = tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    for poem in POEMS:
        assert poem.paragraphs[1] in learned and poem.paragraphs[0] not in learned


def test_packed_documents_do_not_see_each_other(tokenizer) -> None:
    model = pretrain_nano.build_model(tokenizer, TINY)
    pretrain_nano.check_document_masking(model, torch.device("cpu"))  # raises if they do


def test_learning_rate_warms_up_then_decays_to_a_tenth() -> None:
    c = replace(TINY, lr=1e-3, warmup=10)
    assert pretrain_nano.learning_rate(c, 0.0, 0) == pytest.approx(1e-4)
    assert pretrain_nano.learning_rate(c, 0.0, 10) == pytest.approx(1e-3)
    assert pretrain_nano.learning_rate(c, 0.5, 50) == pytest.approx(0.55e-3)
    assert pretrain_nano.learning_rate(c, 1.0, 99) == pytest.approx(1e-4)
    assert pretrain_nano.learning_rate(c, 1.7, 99) == pytest.approx(1e-4)  # past the budget: stays at the floor


def test_a_tiny_candidate_trains_saves_and_travels_in_parts(tokenizer, documents, tmp_path: Path, monkeypatch) -> None:
    heldout = pretrain_nano.heldout_batches(tokenizer, POEMS[:2])
    untrained = pretrain_nano.heldout_loss(pretrain_nano.build_model(tokenizer, TINY), heldout, torch.device("cpu"))
    model, log = pretrain_nano.train_candidate(replace(TINY, max_epochs=40, lr=1e-2), tokenizer, documents, heldout,
                                               seconds=60, device=torch.device("cpu"), seed=0)
    assert log["stopped_by"] == "max_epochs" and log["steps"] > 0
    assert log["heldout_loss"] < untrained  # these poems are in its training data: it must have learned them
    assert log["history"][-1]["heldout_loss"] == pytest.approx(log["heldout_loss"], abs=1e-3)

    directory = tmp_path / "models" / "tiny"
    pretrain_nano.save(model, tokenizer, log, directory)
    monkeypatch.setattr(pretrain_nano, "PART_BYTES", 50_000)  # force several parts
    parts = pretrain_nano.tar_in_parts(directory, tmp_path)
    assert len(parts) > 1 and all((tmp_path / p).stat().st_size <= 50_000 for p in parts)
    joined = b"".join((tmp_path / p).read_bytes() for p in sorted(parts))
    with tarfile.open(fileobj=io.BytesIO(joined)) as tar:
        tar.extractall(tmp_path / "back", filter="data")
    for f in directory.iterdir():
        assert (tmp_path / "back" / "tiny" / f.name).read_bytes() == f.read_bytes()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "back" / "tiny")
    assert loaded.config.attention_dropout == 0.0 and loaded.dtype == torch.float16
    assert AutoTokenizer.from_pretrained(tmp_path / "back" / "tiny").decode(tokenizer(POEMS[0].text)["input_ids"], skip_special_tokens=True) == POEMS[0].text
