"""The device-side decoding path gives transformers' semantics exactly."""

import contextlib

import pytest
import torch
from transformers import NoRepeatNGramLogitsProcessor

from tangpoem import tiny
from tangpoem.data import load_test_rows
from tangpoem.decoding import DeviceNoRepeatNGram
from tangpoem.fast.dense import merge_lora_dequantized
from tangpoem.generate import fast_generation_config, generate, generation_config, left_pad
from tangpoem.model import add_lora, fix_pad_token
from tangpoem.tokens import encode_prompt


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_device_ngram_bans_equal_transformers(n):
    generator = torch.Generator().manual_seed(n)
    for length in (1, 2, 3, 5, 40):
        input_ids = torch.randint(0, 7, (6, length), generator=generator)  # a small vocabulary: many repeats
        scores = torch.randn(6, 11, generator=generator)
        expected = NoRepeatNGramLogitsProcessor(n)(input_ids, scores.clone())
        actual = DeviceNoRepeatNGram(n)(input_ids, scores.clone())
        assert torch.equal(torch.isinf(actual), torch.isinf(expected)), (n, length)
        assert torch.equal(actual, expected)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ngram_bans_in_a_fixed_buffer_are_the_bans_of_the_sequence_so_far(n):
    """The CUDA-graph sampler's form: a buffer of fixed width, its first `length` tokens the sequence, the rest
    pads that must ban nothing."""
    generator = torch.Generator().manual_seed(n)
    ban = DeviceNoRepeatNGram(n)
    for length in (1, 2, 3, 9, 30):
        sequence = torch.randint(1, 7, (5, length), generator=generator)
        buffer = torch.cat([sequence, torch.zeros(5, 40 - length, dtype=torch.long)], dim=1)  # pad id 0 after it
        scores = torch.randn(5, 11, generator=generator)
        assert torch.equal(ban.in_buffer(buffer, torch.tensor(length), scores.clone()), ban(sequence, scores.clone())), (n, length)


@pytest.fixture
def tiny_model():
    tokenizer = fix_pad_token(tiny.build_tokenizer(tiny.TINY_VOCAB_SIZES["tiny-mistral"]))
    return tiny.build_model("tiny-mistral", tokenizer).eval(), tokenizer


@pytest.mark.parametrize("static_cache", [False, True])
def test_fast_greedy_path_yields_the_tokens_of_plain_generate(tiny_model, tiny_config, course_dir, static_cache):
    model, tokenizer = tiny_model
    cfg = tiny_config(do_sample=False, no_repeat_ngram_size=3, max_new_tokens=24, static_cache=static_cache)
    rows = load_test_rows(course_dir)
    fast = generate(model, tokenizer, rows, cfg, progress=False)
    plain = []
    for row in rows:  # the homework's way: one prompt at a time, transformers' own n-gram processor
        prompt = torch.tensor([encode_prompt(tokenizer, row.instruction, row.input)])
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=generation_config(cfg, tokenizer))
        new = out[0, prompt.shape[1]:].tolist()
        new = new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
        plain.append(" ".join(tokenizer.decode(new, skip_special_tokens=True).split()))
    assert fast == plain


def test_sampled_fast_path_honours_no_repeat_ngrams(tiny_model, tiny_config, course_dir):
    model, tokenizer = tiny_model
    cfg = tiny_config(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=40, no_repeat_ngram_size=2)
    rows = load_test_rows(course_dir)[:8]
    prompts = [encode_prompt(tokenizer, r.instruction, r.input) for r in rows]
    gen_config, processors = fast_generation_config(cfg, tokenizer)
    torch.manual_seed(0)
    out = model.generate(**left_pad(prompts, tokenizer.pad_token_id), generation_config=gen_config, logits_processor=processors)
    start = out.shape[1] - 40
    for seq in out.tolist():
        for i in range(start, len(seq)):
            if seq[i] == tokenizer.pad_token_id:
                break  # finished early: padding after EOS
            assert (seq[i - 1], seq[i]) not in set(zip(seq[: i - 1], seq[1:i])), i


def test_merged_lora_model_computes_what_the_adapter_model_does(tiny_model, tiny_config):
    model, tokenizer = tiny_model
    cfg = tiny_config()
    peft_model = add_lora(model, cfg)
    for name, param in peft_model.named_parameters():  # LoRA B starts at zero: give it something to merge
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    peft_model.eval()
    ids = torch.tensor([encode_prompt(tokenizer, "指令", "白日依山盡，黃河入海流。")])
    with torch.no_grad():
        expected = peft_model(ids).logits
        merged = merge_lora_dequantized(peft_model, torch.float32)
        actual = merged(ids).logits
    assert not any("lora" in n for n, _ in merged.named_modules())
    assert torch.allclose(actual, expected, atol=1e-4)


@pytest.mark.parametrize("top_k", [0, 50])
def test_fast_path_applies_exactly_our_processors_in_order(tiny_model, tiny_config, top_k):
    """transformers must not add its own n-gram ban or warpers (e.g. its default top_k=50) to ours."""
    model, tokenizer = tiny_model
    gen_config, processors = fast_generation_config(tiny_config(top_k=top_k), tokenizer)
    prepared = model._prepare_generation_config(gen_config)
    prepared = prepared[0] if isinstance(prepared, tuple) else prepared
    final = model._get_logits_processor(generation_config=prepared, input_ids_seq_length=5, encoder_input_ids=None,
                                        prefix_allowed_tokens_fn=None, logits_processor=processors, device="cpu")
    names = [type(p).__name__ for p in final]
    expected = ["DeviceNoRepeatNGram", "TemperatureLogitsWarper"] + (["TopKLogitsWarper"] if top_k else []) + ["TopPLogitsWarper"]
    assert names == expected


def test_the_sampler_refuses_sliding_window_caches_and_the_window_lifts_within_its_length():
    """A sliding-window cache layer counts its tokens in a Python int that a graph replay would never advance
    (and its slots wrap around where the sampler's mask does not): GraphedSampler refuses such a cache. Within
    the window's length, lifting the window gives plain static layers and the tokens of generate with the
    window on."""
    from transformers import MistralConfig, MistralForCausalLM, StaticCache
    from transformers.cache_utils import StaticLayer

    from tangpoem.fast.decode import GraphedSampler, full_attention_within_window

    config = MistralConfig(vocab_size=200, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, sliding_window=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = MistralForCausalLM(config).eval()
    ids = torch.randint(3, 200, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    plain = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, min_new_tokens=20, do_sample=False)
    with pytest.raises(ValueError, match="plain layers: lift the model's sliding window"), torch.no_grad():
        GraphedSampler(model, [], 20, 20, False, 2, 0, graphs=False)(ids, mask)
    with full_attention_within_window(model, 12 + 20) as lifted, torch.no_grad():
        assert all(type(layer) is StaticLayer for layer in StaticCache(config=model.config, max_cache_len=32).layers)
        sampled = GraphedSampler(model, [], 20, 20, False, 2, 0, graphs=False)(ids, mask)
    assert lifted and model.config.sliding_window == 64  # put back
    assert torch.equal(sampled, plain[:, 12:])
    with full_attention_within_window(model, 65) as lifted:  # longer than the window: kept
        assert not lifted and model.config.sliding_window == 64


SAMPLINGS = [dict(do_sample=False), dict(), dict(temperature=1.0, top_p=0.9, top_k=20), dict(min_new_tokens=12, temperature=1.0, top_p=1.0),
             dict(stop_by_probability=True, temperature=0.7)]


@pytest.mark.parametrize("settings", SAMPLINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "homework")
def test_graphed_sampler_run_eagerly_gives_generates_very_tokens(tiny_name, tiny_config, course_dir, settings):
    """The sampler that a GPU replays as one CUDA graph a token, run step by step on the CPU: the tokens of
    transformers' generate with the same processors, static cache and seed, sampled ones included."""
    from tangpoem.fast.decode import GraphedSampler

    tokenizer = fix_pad_token(tiny.build_tokenizer(tiny.TINY_VOCAB_SIZES[tiny_name]))
    model = tiny.build_model(tiny_name, tokenizer).eval()
    cfg = tiny_config(max_new_tokens=30, static_cache=True, **settings)
    batch = left_pad([encode_prompt(tokenizer, r.instruction, r.input) for r in load_test_rows(course_dir)], tokenizer.pad_token_id)
    gen_config, processors = fast_generation_config(cfg, tokenizer)
    torch.manual_seed(3)
    with torch.no_grad():
        expected = model.generate(**batch, generation_config=gen_config, logits_processor=processors)[:, batch["input_ids"].shape[1]:]
    torch.manual_seed(3)
    sampler = GraphedSampler(model, processors, cfg.max_new_tokens, cfg.min_new_tokens, cfg.do_sample, tokenizer.eos_token_id,
                             tokenizer.pad_token_id, graphs=False)
    with torch.no_grad():
        actual = sampler(**batch)
    assert torch.equal(actual, expected)


def test_a_token_step_the_gpu_cannot_record_is_one_line_naming_the_knob(monkeypatch):
    """A kernel that a GPU (or a library version) cannot record into a CUDA graph: one line that says to set
    static_cache: false, not CUDA's own error from inside generate; the call's buffers are released."""
    from transformers import MistralConfig, MistralForCausalLM

    import tangpoem.fast.decode as decode
    import tangpoem.fast.graphs as graphs
    from tangpoem.errors import RunError

    class Refused:
        def __init__(self, graph) -> None:
            pass

        def __enter__(self):
            raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

        def __exit__(self, *exc) -> None:
            pass

    monkeypatch.setattr(graphs, "warm_up_cublas", lambda device: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(torch.cuda, "graph", Refused)
    config = MistralConfig(vocab_size=200, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, sliding_window=None, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = MistralForCausalLM(config).eval()
    sampler = decode.GraphedSampler(model, [], 8, 0, False, 2, 0, graphs=True)
    ids = torch.randint(3, 200, (2, 6))
    with pytest.raises(RunError, match=r"could not record the token step as a CUDA graph \(operation not permitted when "
                                       r"stream is capturing\); set static_cache: false"), torch.no_grad():
        sampler(ids, torch.ones_like(ids))
    assert sampler.tokens is None and sampler.cache_inputs is None


def test_grouped_decode_attention_is_sdpas_attention_and_writes_the_same_tokens(tiny_name, course_dir):
    """The decode step's attention with the query heads of each key/value head grouped as its queries: the
    attention of transformers' sdpa (which copies the cache to every query head first), and the same greedy
    tokens through the sampler."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from tangpoem.fast.decode import GraphedSampler, grouped_decode_attention, grouped_decode_attention_forward

    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(3, h, length, 16, generator=generator) for h, length in ((8, 1), (2, 20), (2, 20)))
    mask = torch.ones(3, 1, 1, 20, dtype=torch.bool)
    mask[1, ..., :5] = mask[2, ..., 14:] = False  # left padding; keys beyond the position
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 4, True
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    actual, _ = grouped_decode_attention_forward(module, query, key, value, mask, scaling=0.25)
    assert actual.shape == expected.shape == (3, 1, 8, 16) and torch.allclose(actual, expected, atol=1e-6)

    tokenizer = fix_pad_token(tiny.build_tokenizer(tiny.TINY_VOCAB_SIZES[tiny_name]))
    model = tiny.build_model(tiny_name, tokenizer).eval()
    batch = left_pad([encode_prompt(tokenizer, r.instruction, r.input) for r in load_test_rows(course_dir)], tokenizer.pad_token_id)
    runs = []
    for grouped in (False, True):
        sampler = GraphedSampler(model, [DeviceNoRepeatNGram(3)], 24, 0, False, tokenizer.eos_token_id, tokenizer.pad_token_id,
                                 graphs=False)
        with torch.no_grad(), grouped_decode_attention(model) if grouped else contextlib.nullcontext():
            runs.append(sampler(**batch))
    assert model.config._attn_implementation == "sdpa"  # put back
    assert torch.equal(runs[0], runs[1])


class FavourEOS(torch.nn.Module):
    """A rule that makes EOS likely (tiny random models seldom end), reading only the scores, as the sampler's rules."""

    def __init__(self, eos: int) -> None:
        super().__init__()
        self.eos = eos

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        scores[:, self.eos] += 6.0
        return scores


def test_graphed_sampler_keeps_min_new_tokens_and_pads_ended_rows_as_generate(tiny_name, tiny_config, course_dir):
    """With EOS made likely: without min_new_tokens rows end early; with min_new_tokens 12 none ends before its
    12th token; either way the sampler's tokens are generate's, pads after each row's EOS included."""
    from transformers import LogitsProcessorList

    from tangpoem.fast.decode import GraphedSampler

    tokenizer = fix_pad_token(tiny.build_tokenizer(tiny.TINY_VOCAB_SIZES[tiny_name]))
    model = tiny.build_model(tiny_name, tokenizer).eval()
    batch = left_pad([encode_prompt(tokenizer, r.instruction, r.input) for r in load_test_rows(course_dir)], tokenizer.pad_token_id)
    eos = tokenizer.eos_token_id
    for least in (0, 12):
        cfg = tiny_config(max_new_tokens=30, min_new_tokens=least, static_cache=True, temperature=1.0, top_p=1.0)
        gen_config, processors = fast_generation_config(cfg, tokenizer)
        processors = LogitsProcessorList([FavourEOS(eos), *processors])
        torch.manual_seed(4)
        with torch.no_grad():
            expected = model.generate(**batch, generation_config=gen_config, logits_processor=processors)[:, batch["input_ids"].shape[1]:]
        torch.manual_seed(4)
        with torch.no_grad():
            actual = GraphedSampler(model, processors, 30, least, True, eos, tokenizer.pad_token_id, graphs=False, check_every=1)(**batch)
        first_eos = [row.tolist().index(eos) for row in expected if eos in row.tolist()]
        if least:
            assert first_eos and min(first_eos) >= least
        else:
            assert min(first_eos) < 12  # the rule above would have changed these rows
        assert torch.equal(actual, expected), least


def test_graphed_sampler_pads_ended_rows_and_stops_when_every_row_has_ended(course_dir):
    """nano ends its poems: rows that ended get pads, as generate gives them, and the sampler stops within
    `check_every` tokens of the last row's end (generate at once: its extra columns are pads)."""
    from tangpoem.config import load_config
    from tangpoem.fast.decode import GraphedSampler
    from tangpoem.generate import load_for_generation

    cfg = load_config("nano-cpu", {"static_cache": True, "max_new_tokens": 96, "data_dir": str(course_dir), "do_sample": False})
    model, tokenizer, _ = load_for_generation(cfg, adapter=None)
    prompts = [encode_prompt(tokenizer, r.instruction, r.input, cfg.prompt_mode) for r in load_test_rows(course_dir)]
    gen_config, processors = fast_generation_config(cfg, tokenizer)

    def generate_new_tokens(batch):
        with torch.no_grad():
            return model.generate(**batch, generation_config=gen_config, logits_processor=processors)[:, batch["input_ids"].shape[1]:]

    ended = (generate_new_tokens(left_pad(prompts, tokenizer.pad_token_id)) == tokenizer.eos_token_id).any(1).tolist()
    batch = left_pad([p for p, e in zip(prompts, ended) if e], tokenizer.pad_token_id)  # the poems nano ends (greedy)
    assert sum(ended) >= 5
    expected = generate_new_tokens(batch)
    with torch.no_grad():
        actual = GraphedSampler(model, processors, cfg.max_new_tokens, 0, False, tokenizer.eos_token_id, tokenizer.pad_token_id,
                                graphs=False, check_every=8)(**batch)
    assert (expected == tokenizer.eos_token_id).any(1).all() and expected.shape[1] < cfg.max_new_tokens  # every row ended
    width = expected.shape[1]
    assert width <= actual.shape[1] < width + 8
    assert torch.equal(actual[:, :width], expected) and bool((actual[:, width:] == tokenizer.pad_token_id).all())


def test_graphed_sampling_leaves_cpu_models_to_transformers(tiny_model):
    from tangpoem.fast.decode import graphed_sampling

    model, tokenizer = tiny_model
    with graphed_sampling(model, [], 8, 0, False, tokenizer.eos_token_id, tokenizer.pad_token_id, 64) as sampler:
        assert sampler is None
