"""The label mask: exact on both tiny tokenizers, kept by the collator, and seen by the loss."""

import pytest
import torch
from tokenizers import processors

from tangpoem import tiny
from tangpoem.data import Row, load_train_rows
from tangpoem.model import fix_pad_token
from tangpoem.prompt import INSTRUCTION, SYSTEM_PROMPT, build_prompt, course_prompt
from tangpoem.tokens import IGNORE_INDEX, collate, encode_prompt, encode_training_row, encode_training_rows

ROW = Row(INSTRUCTION, "秦川雄帝宅，函谷壯皇居。", "綺殿千尋起，離宮百雉餘。連甍遙接漢，飛觀迥凌虛。")


@pytest.fixture
def tokenizer(tiny_name):
    return fix_pad_token(tiny.build_tokenizer(tiny.TINY_VOCAB_SIZES[tiny_name]))


def test_tiny_tokenizers_behave_like_sentencepiece_llama(tokenizer):
    ids = tokenizer("白日依山盡")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids  # BOS added, EOS not
    assert tokenizer.convert_ids_to_tokens(ids)[1].startswith("▁")  # word mark with a prefix space
    assert len(tokenizer) in tiny.TINY_VOCAB_SIZES.values()


def test_fresh_tiny_tokenizer_has_no_pad_token_and_we_pick_unk():
    fresh = tiny.build_tokenizer.__wrapped__(4600)
    assert fresh.pad_token is None
    assert fix_pad_token(fresh).pad_token == "<unk>"


def test_course_prompt_is_the_homeworks_text():
    assert course_prompt("INS", "IN") == (
        "[INST] <<SYS>>\n" + SYSTEM_PROMPT + "\n<</SYS>>\n\nINS\nIN\n[/INST]"
    )


def test_label_mask_is_exact(tokenizer):
    prompt_ids = encode_prompt(tokenizer, ROW.instruction, ROW.input)
    answer_ids = tokenizer(ROW.output, add_special_tokens=False)["input_ids"]
    row = encode_training_row(tokenizer, ROW, cutoff_len=256)
    n = len(prompt_ids)
    assert row.input_ids == prompt_ids + answer_ids + [tokenizer.eos_token_id]
    assert row.labels[:n] == [IGNORE_INDEX] * n  # every prompt token masked
    assert row.labels[n:] == answer_ids + [tokenizer.eos_token_id]  # the whole answer and one EOS learned
    assert row.labels.count(tokenizer.eos_token_id) == 1 and not row.truncated
    learned = [t for t in row.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(learned, skip_special_tokens=True).strip() == ROW.output


def test_training_rows_start_with_the_generation_prompt(tokenizer, course_dir):
    """One template for train and generate: each training row begins with exactly the ids generation feeds."""
    for index, row in enumerate(load_train_rows(course_dir, 50)):
        encoded = encode_training_row(tokenizer, row, 256, index=index)
        prompt = encode_prompt(tokenizer, row.instruction, row.input)
        assert encoded.input_ids[: len(prompt)] == prompt
        assert encoded.labels.index(next(t for t in encoded.labels if t != IGNORE_INDEX)) == len(prompt)


def test_boundary_merges_cannot_shift_the_mask(tokenizer):
    """Tokenizing prompt+answer as one string lets BPE merge across `[/INST]`; we never do that, so the
    mask boundary is the prompt's own length whatever the answer begins with."""
    for answer in ("]綺殿", "INST]起，", "。綺", " 綺"):
        row = encode_training_row(tokenizer, Row(ROW.instruction, ROW.input, answer), 256)
        prompt = encode_prompt(tokenizer, ROW.instruction, ROW.input)
        assert row.input_ids[: len(prompt)] == prompt
        assert row.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        assert row.labels[len(prompt)] != IGNORE_INDEX


def test_inference_prompt_has_no_eos_even_if_the_tokenizer_appends_one(tokenizer):
    """The homework set add_eos_token=True, which put </s> right after [/INST] at inference."""
    eos_adding = tiny.build_tokenizer.__wrapped__(len(tokenizer))
    bos, eos = eos_adding.bos_token_id, eos_adding.eos_token_id
    eos_adding.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    assert eos_adding(course_prompt(INSTRUCTION, ROW.input))["input_ids"][-1] == eos  # the trap is armed
    ids = encode_prompt(eos_adding, INSTRUCTION, ROW.input)
    assert ids[0] == bos and eos not in ids
    assert ids == encode_prompt(tokenizer, INSTRUCTION, ROW.input)


def test_chat_template_mode(tokenizer):
    text = build_prompt(tokenizer, INSTRUCTION, ROW.input, mode="chat_template")
    assert text.startswith("<s>[INST] <<SYS>>\n" + SYSTEM_PROMPT) and text.endswith(ROW.input + " [/INST]")
    ids = encode_prompt(tokenizer, INSTRUCTION, ROW.input, mode="chat_template")
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id  # the template's BOS, not two
    row = encode_training_row(tokenizer, ROW, 256, mode="chat_template")
    assert row.input_ids[: len(ids)] == ids and row.labels[: len(ids)] == [IGNORE_INDEX] * len(ids)


def test_chat_template_mode_needs_a_template(tokenizer):
    no_template = tiny.build_tokenizer.__wrapped__(len(tokenizer))
    no_template.chat_template = None
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        build_prompt(no_template, INSTRUCTION, ROW.input, mode="chat_template")


def test_truncation_cuts_the_answer_never_the_prompt(tokenizer, course_dir):
    prompt = encode_prompt(tokenizer, ROW.instruction, ROW.input)
    cutoff = len(prompt) + 5
    row = encode_training_row(tokenizer, ROW, cutoff)
    assert len(row.input_ids) == cutoff and row.truncated
    assert row.input_ids[: len(prompt)] == prompt
    assert tokenizer.eos_token_id not in row.labels  # a cut poem has not ended: no EOS to learn
    dataset = encode_training_rows(tokenizer, load_train_rows(course_dir, 40), cutoff_len=len(prompt) + 12)
    assert 0 < dataset.num_truncated < 40
    assert f"{dataset.num_truncated} answers cut" in dataset.summary()
    assert encode_training_rows(tokenizer, load_train_rows(course_dir, 40), 256).num_truncated == 0


def test_a_prompt_longer_than_the_cutoff_is_an_error(tokenizer):
    from tangpoem.errors import InputError

    with pytest.raises(InputError, match=r"training record 7: the prompt alone is \d+ tokens, cutoff_len is 10"):
        encode_training_row(tokenizer, ROW, 10, index=7)


def test_collator_pads_and_keeps_labels(tokenizer, course_dir):
    rows = encode_training_rows(tokenizer, load_train_rows(course_dir, 4), 256).rows
    batch = collate(rows, tokenizer.pad_token_id)
    longest = max(len(r.input_ids) for r in rows)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (4, longest)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        assert batch["labels"][i, :n].tolist() == r.labels  # our mask, untouched
        assert batch["labels"][i, n:].eq(IGNORE_INDEX).all() and batch["attention_mask"][i, n:].eq(0).all()
        assert batch["input_ids"][i, n:].eq(tokenizer.pad_token_id).all()
    assert collate(rows, tokenizer.pad_token_id, pad_to_multiple_of=8)["input_ids"].shape[1] % 8 == 0


def test_the_mask_reaches_the_loss(tiny_name, tokenizer, course_dir):
    """The model's own loss on a collated batch equals cross-entropy over answer tokens only
    (and differs from the loss over every token, which is what the homework's collator trained on)."""
    model = tiny.build_model(tiny_name, tokenizer)
    rows = encode_training_rows(tokenizer, load_train_rows(course_dir, 4), 256).rows
    batch = collate(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        output = model(**batch)
    logits = output.logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
    targets = batch["labels"][:, 1:]
    answer_only = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX)
    everything = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, IGNORE_INDEX)
    all_tokens = torch.nn.functional.cross_entropy(logits.transpose(1, 2), everything, ignore_index=IGNORE_INDEX)
    assert torch.allclose(output.loss, answer_only, atol=1e-6)
    assert not torch.allclose(output.loss, all_tokens, atol=1e-3)


def test_packed_batch_gives_the_padded_loss_and_no_row_sees_another(tiny_name, tokenizer, course_dir):
    from tangpoem.tokens import pack

    model = tiny.build_model(tiny_name, tokenizer).eval()
    rows = encode_training_rows(tokenizer, load_train_rows(course_dir, 4), 256).rows
    with torch.no_grad():
        padded = model(**collate(rows, tokenizer.pad_token_id), use_cache=False).loss
        packed_batch = pack(rows)
        packed = model(**packed_batch, use_cache=False)
        assert packed_batch["input_ids"].shape == (1, sum(len(r.input_ids) for r in rows))
        assert torch.allclose(packed.loss, padded, atol=1e-5)
        # change every token of row 0: the logits of rows 1..3 must not move
        changed = [type(rows[0])([tokenizer.unk_token_id] * len(rows[0].input_ids), rows[0].labels, False), *rows[1:]]
        other = model(**pack(changed), use_cache=False)
    n0 = len(rows[0].input_ids)
    assert torch.allclose(packed.logits[0, n0:], other.logits[0, n0:], atol=1e-5)
    assert not torch.allclose(packed.logits[0, :n0], other.logits[0, :n0], atol=1e-3)
