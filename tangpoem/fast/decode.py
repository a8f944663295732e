"""Generation on a GPU: each new token's step (forward, decoding rules, choice) replayed as one CUDA graph
(GraphedSampler), with the decode step's attention reading the grouped key/value cache as it is; no
per-kernel CPU cost, and no compiling."""

from __future__ import annotations

import contextlib
import inspect
import math
from typing import Any, Iterator

import torch

from tangpoem.decoding import DeviceNoRepeatNGram
from tangpoem.errors import RunError

GROUPED_DECODE = "tangpoem_grouped_decode"


def grouped_decode_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature, for a decode step (one new token a row): the query heads that
    share a key/value head (grouped-query attention: 4 per head in Breeze) go into sdpa as that head's 4 queries,
    all seeing the same keys under the same mask. transformers' sdpa, given a mask (left-padded rows need one),
    first copies every key/value head to each of its query heads; this reads the cache as it is. Same math.
    Anything else (the prompt's forward) goes to transformers' sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows, heads, length, dim = query.shape
    groups = heads // key.shape[1]
    if length != 1 or dropout or attention_mask is None or attention_mask.dim() != 4 or attention_mask.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    grouped = query.reshape(rows, key.shape[1], groups, dim)  # query head h = kv head h // groups, as repeat_kv pairs them
    mask = attention_mask[:, :, :, : key.shape[-2]]  # (rows, 1, 1, keys): the same keys for every query of a row
    out = torch.nn.functional.scaled_dot_product_attention(grouped, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(rows, 1, heads, dim), None  # (rows, tokens, heads, dim), as transformers' attention functions return


@contextlib.contextmanager
def grouped_decode_attention(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, `model` attends with grouped_decode_attention_forward (its masks built as sdpa's)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from tangpoem.fast.attention import attention_implementation

    AttentionInterface.register(GROUPED_DECODE, grouped_decode_attention_forward)
    AttentionMaskInterface.register(GROUPED_DECODE, sdpa_mask)
    with attention_implementation(model, GROUPED_DECODE):
        yield


class GraphedSampler:
    """transformers' sampling loop (`generate` with a static KV cache: the prompt's forward, then for each new
    token the forward, the decoding rules, the choice of the token) with each new token's step one CUDA graph
    replay. The forward, the rules (`processors`) and the bookkeeping are recorded once per batch; the CPU
    then only replays, and reads whether every row has ended once every `check_every` tokens.

    Why not transformers' generate with the forward alone replayed (tangpoem's path before 6f68ff1): generate's
    Python and the rules' kernels, launched one by one at every token, cost a share of what the replay saves
    (docs/speed-log.md, run 12). Same semantics as generate with these processors: its MinNewTokens rule first,
    then the processors in order, sampling by torch.multinomial on their softmax (argmax when greedy), pads
    after a row's EOS; drawn from the same generator in the same order, so a CPU run (graphs=False) gives
    generate's very tokens.

    A call's state lives in buffers the graph reads and advances in place: `tokens` (prompt and new tokens),
    `allowed` (the keys each row may attend to), `length` (tokens so far), `unfinished`, `next_position`
    and the static cache."""

    def __init__(self, model: torch.nn.Module, processors: Any, max_new_tokens: int, min_new_tokens: int,
                 do_sample: bool, eos_token_id: int | None, pad_token_id: int, graphs: bool = True, check_every: int = 8) -> None:
        self.model = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.processors = processors
        self.max_new_tokens, self.min_new_tokens, self.do_sample = max_new_tokens, min_new_tokens, do_sample
        self.eos, self.pad, self.graphs, self.check_every = eos_token_id, pad_token_id, graphs, check_every
        # transformers 5.17 names the cache `past_key_values`; later 5.x `cache` (the old name warns)
        params = inspect.signature(self.model.forward).parameters
        self.cache_key = "cache" if "cache" in params else "past_key_values"
        self.captures = 0

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The new tokens of each row, (B, new): pads after a row's EOS; fewer than max_new_tokens columns when
        every row ended sooner."""
        from transformers import StaticCache
        from transformers.cache_utils import StaticLayer

        rows, prompt = input_ids.shape
        total, device = prompt + self.max_new_tokens, input_ids.device
        self.prompt = prompt
        self.tokens = torch.full((rows, total), self.pad, dtype=torch.long, device=device)
        self.tokens[:, :prompt] = input_ids
        self.allowed = torch.ones((rows, total), dtype=torch.bool, device=device)  # keys a row may attend to
        self.allowed[:, :prompt] = attention_mask.bool()
        self.key_index = torch.arange(total, device=device)
        self.length = torch.tensor(prompt, device=device)  # tokens so far (a tensor: the replays advance it)
        self.unfinished = torch.ones(rows, dtype=torch.bool, device=device)
        cache = StaticCache(config=self.model.config, max_cache_len=total)
        # A replay advances what lives on the device: plain static layers count their tokens there. Other kinds
        # (a sliding window's) count in Python, and their slots wrap around where this step's mask does not.
        if not all(type(layer) is StaticLayer for layer in cache.layers):
            raise ValueError("GraphedSampler needs a static cache of plain layers: lift the model's sliding window "
                             "(full_attention_within_window) or generate with transformers")
        positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)  # as generate's
        self.next_position = positions[:, -1:] + 1
        self.cache_inputs = {self.cache_key: cache, "use_cache": True}
        try:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, logits_to_keep=1,
                                **self.cache_inputs).logits
            self.choose(logits)
            steps = self.max_new_tokens - 1
            graph = self.capture() if self.graphs and steps else None
            done = 0
            while done < steps:
                if graph is not None:
                    graph.replay()
                else:
                    self.step()
                done += 1
                if done % self.check_every == 0 and not bool(self.unfinished.any()):
                    break
            return self.tokens[:, prompt : prompt + 1 + done]
        finally:  # the cache's and the graph's memory go with the call, an error's too (a notebook keeps its traceback)
            self.tokens = self.allowed = self.cache_inputs = cache = graph = None

    def step(self) -> None:
        """One new token: the last one's forward through the cache, then the choice (in place: replayable)."""
        last = self.tokens.gather(1, (self.length - 1).expand(self.tokens.shape[0], 1))
        mask = (self.allowed & (self.key_index < self.length))[:, None, None, :]  # (B, 1, 1, keys): sdpa's bool mask
        logits = self.model(input_ids=last, attention_mask=mask, position_ids=self.next_position, **self.cache_inputs).logits
        self.next_position.add_(1)
        self.choose(logits)

    def choose(self, logits: torch.Tensor) -> None:
        scores = logits[:, -1].float()
        if self.min_new_tokens and self.eos is not None:  # generate's MinNewTokensLengthLogitsProcessor
            early = self.length - self.prompt < self.min_new_tokens
            scores[:, self.eos] = torch.where(early, torch.full_like(scores[:, self.eos], -math.inf), scores[:, self.eos])
        for processor in self.processors:
            scores = (processor.in_buffer(self.tokens, self.length, scores) if isinstance(processor, DeviceNoRepeatNGram)
                      else processor(self.tokens, scores))  # the others read only the scores
        if self.do_sample:
            chosen = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            chosen = torch.argmax(scores, dim=-1)
        chosen = torch.where(self.unfinished, chosen, torch.full_like(chosen, self.pad))
        self.tokens.scatter_(1, self.length.expand(chosen.shape[0], 1), chosen[:, None])
        if self.eos is not None:
            self.unfinished &= chosen != self.eos
        self.length.add_(1)

    def capture(self) -> torch.cuda.CUDAGraph:
        from tangpoem.fast.graphs import warm_up_cublas

        # No eager warm-up step: the prompt's forward and the first choice ran eagerly; only cuBLAS's handles
        # for the capture's stream are new. Recording runs nothing: the first replay makes the second token.
        warm_up_cublas(self.tokens.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.step()
        except RuntimeError as e:  # a kernel this GPU or library version cannot record
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise RunError(f"generation: this GPU could not record the token step as a CUDA graph ({reason}); "
                           "set static_cache: false (--set static_cache=false) to generate with transformers") from e
        self.captures += 1
        return graph


@contextlib.contextmanager
def full_attention_within_window(model: torch.nn.Module, longest: int) -> Iterator[bool]:
    """Within, a sliding-window model (Mistral's configs set a 4096-token window, Breeze's too) attends
    without its window when no sequence is longer than the window: the same attention, and a static cache
    of plain StaticLayers, whose token count lives on the device where a replay advances it (a sliding-window
    layer counts in a Python int, which a replay never would). Yields whether the window was lifted."""
    config = getattr(model, "config", None)
    window = getattr(config, "sliding_window", None)
    if window is None or longest > window or getattr(config, "layer_types", None) is not None:
        yield False
        return
    config.sliding_window = None
    try:
        yield True
    finally:
        config.sliding_window = window


@contextlib.contextmanager
def graphed_sampling(model: torch.nn.Module, processors: Any, max_new_tokens: int, min_new_tokens: int, do_sample: bool,
                     eos_token_id: int | None, pad_token_id: int, longest: int) -> Iterator[GraphedSampler | None]:
    """Within, a GraphedSampler for `model`, attending with grouped_decode_attention and with fused RMSNorms, or
    None where transformers' generate stays: the CPU, models with 4-bit (bitsandbytes) layers (their kernels
    are not known to be capture-safe), attention other than sdpa (the sampler's masks are sdpa's), and sliding
    windows shorter than `longest` tokens (prompt and new tokens)."""
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(root.parameters()).device
    if (device.type != "cuda" or getattr(root, "hf_quantizer", None) is not None
            or getattr(root.config, "_attn_implementation", None) != "sdpa"):
        yield None
        return
    with full_attention_within_window(root, longest) as lifted:
        if not lifted and getattr(root.config, "sliding_window", None) is not None:
            yield None
            return
        from tangpoem.fast.fused import fused_rms_norm

        # each norm one kernel instead of about eight (training's fused_rms_norm): the same values up to rounding
        with grouped_decode_attention(root), fused_rms_norm(root):
            yield GraphedSampler(model, processors, max_new_tokens, min_new_tokens, do_sample, eos_token_id, pad_token_id)
