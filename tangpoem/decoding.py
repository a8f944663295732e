"""Decoding on the GPU: the homework's sampling with no-repeat n-grams computed on the device, LoRA
merged into dequantized weights for fast batched generation, and the decode step replayed as a CUDA graph."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


class DeviceNoRepeatNGram(LogitsProcessor):
    """The bans of transformers' NoRepeatNGramLogitsProcessor (a token may not complete an n-gram
    that already occurs in the sequence, prompt and padding included), computed with tensor ops on
    the device instead of Python loops over every row and position at every step."""

    def __init__(self, ngram_size: int) -> None:
        if ngram_size < 1:
            raise ValueError(f"ngram_size must be >= 1, got {ngram_size}")
        self.n = ngram_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n, length = self.n, input_ids.shape[1]
        if length < n:  # no complete n-gram yet: nothing to ban
            return scores
        if n == 1:
            banned_counts = torch.zeros_like(scores, dtype=torch.int32).scatter_add_(
                1, input_ids, torch.ones_like(input_ids, dtype=torch.int32))
            return scores.masked_fill(banned_counts > 0, -float("inf"))
        windows = input_ids.unfold(1, n, 1)  # (B, L-n+1, n): every n-gram so far
        prefix = input_ids[:, length - (n - 1):]  # (B, n-1): what the next token would extend
        matches = (windows[:, :, : n - 1] == prefix[:, None, :]).all(-1)  # (B, L-n+1)
        counts = torch.zeros_like(scores, dtype=torch.int32).scatter_add_(1, windows[:, :, n - 1], matches.int())
        return scores.masked_fill(counts > 0, -float("inf"))


class StopByProbability(LogitsProcessor):
    """Stop or go on, decided on P(EOS) against P(anything else), at temperature 1: rows where
    P(EOS) >= threshold must stop, the others may not.

    Why: near-greedy decoding (the homework's temperature 0.1, top_p 0.3) picks EOS whenever it beats
    the single likeliest character, though "go on" is spread over thousands of characters: a model
    whose P(stop) after two verses is 0.2 stops there every time. Everything else is sampled as before."""

    def __init__(self, eos_token_id: int, threshold: float = 0.5) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.eos, self.threshold = eos_token_id, threshold

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        stop = scores.float().softmax(-1)[:, self.eos] >= self.threshold  # (B,)
        out = scores.masked_fill(stop[:, None], -float("inf"))
        out[:, self.eos] = torch.where(stop, torch.zeros_like(scores[:, self.eos]), torch.full_like(scores[:, self.eos], -float("inf")))
        return out


def logits_processors(no_repeat_ngram_size: int, do_sample: bool, temperature: float, top_k: int, top_p: float,
                      stop_eos_token_id: int | None = None) -> LogitsProcessorList:
    """In transformers' own order: n-gram bans first, then temperature, top-k, top-p. With
    `stop_eos_token_id`, the stop decision (StopByProbability) comes right after the bans."""
    processors = LogitsProcessorList()
    if no_repeat_ngram_size > 0:
        processors.append(DeviceNoRepeatNGram(no_repeat_ngram_size))
    if stop_eos_token_id is not None:
        processors.append(StopByProbability(stop_eos_token_id))
    if do_sample:
        if temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if top_k > 0:
            processors.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p))
    return processors


@torch.no_grad()
def merge_lora_dequantized(model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """A plain model for inference: each NF4 layer dequantized to `dtype` with its LoRA delta added.

    The weights are those the adapter was trained against (peft's own merge_and_unload on a 4-bit
    model would re-quantize them). Needs ~2 bytes a parameter of GPU memory (~15 GB for Breeze)."""
    from peft.tuners.lora import LoraLayer

    from tangpoem.model import dense_linear, dequantized_weight, is_linear4bit, replace_module

    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    replacements: list[tuple[str, torch.nn.Module]] = []
    for name, module in root.named_modules():
        lora = isinstance(module, LoraLayer)
        if not (lora or is_linear4bit(module)) or any(name.startswith(done + ".") for done, _ in replacements):
            continue
        base = module.get_base_layer() if lora else module
        weight = dequantized_weight(base, dtype)
        if lora:
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight += module.get_delta_weight(adapter).to(dtype)
        replacements.append((name, dense_linear(base, weight)))
    for name, linear in replacements:
        replace_module(root, name, linear)
    for param in root.parameters():  # norms and embeddings that k-bit preparation cast to fp32
        param.data = param.data.to(dtype)
        param.requires_grad_(False)
    root.config.use_cache = True
    root.hf_quantizer = None  # nothing is 4-bit any more: graphed_decoding may replay its decode step (static cache)
    return root.eval()


class GraphedDecodeStep:
    """A model's one-token forward in generation, captured as a CUDA graph on its first call and then
    replayed: no per-kernel CPU cost, and no compiling.

    transformers' generate, with a static KV cache, calls a torch.compile'd forward for every token after
    the prompt (its graphs need fixed shapes and addresses, which the static cache gives). For a 7B model
    that compile takes ~40 s, longer than the 15 poems take to write. This captures the same forward as
    eager mode runs it instead: the cache's tensors and position counter are updated in place by the
    replayed kernels. Tensor inputs are copied into fixed buffers; the logits come back in one (generate
    copies them before the next call). Other inputs (the cache object) must be the very objects captured:
    a new cache, or new shapes (the next batch), means a new capture.

    Only caches whose every layer is a plain StaticLayer are replayed. A sliding-window layer counts its
    tokens in a Python int, which a replay would never advance (each later step's mask would be built for
    the wrong position): such calls, and any call without a cache, run eagerly."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captures = 0
        self.eager_calls = 0

    @staticmethod
    def signature(inputs: dict[str, Any]) -> tuple:
        """Tensors by shape, dtype and device, plain values by value, objects by type (and by identity, in __call__)."""
        return tuple((name, (tuple(v.shape), v.dtype, v.device) if isinstance(v, torch.Tensor) else
                      v if v is None or isinstance(v, (bool, int, float, str)) else type(v))
                     for name, v in sorted(inputs.items()))

    @staticmethod
    def replayable(cache: Any) -> bool:
        from transformers.cache_utils import StaticLayer

        layers = getattr(cache, "layers", None)
        return bool(layers) and all(type(layer) is StaticLayer for layer in layers)

    def __call__(self, **inputs: Any) -> Any:
        if not self.replayable(inputs.get("past_key_values")):
            self.eager_calls += 1
            return self.model(**inputs)
        objects = [v for v in inputs.values() if not (v is None or isinstance(v, (torch.Tensor, bool, int, float, str)))]
        # held, and compared by identity: an id alone could be a freed cache's, reused by a new one
        if self.graph is None or self.signature(inputs) != self.captured or any(a is not b for a, b in zip(objects, self.objects)):
            self.capture(inputs, objects)
        else:
            for name, value in inputs.items():
                if isinstance(value, torch.Tensor):
                    self.buffers[name].copy_(value)
        self.graph.replay()
        return self.output

    def capture(self, inputs: dict[str, Any], objects: list[Any]) -> None:
        from tangpoem.graphs import warm_up_cublas

        # the last capture's graph, output, buffers and cache go first (its memory pool once nothing holds them)
        self.graph, self.output, self.objects = None, None, []
        self.buffers = {name: v.clone() for name, v in inputs.items() if isinstance(v, torch.Tensor)}
        device = next(iter(self.buffers.values())).device
        # No eager warm-up run: it would advance the cache's position counter once more than the tokens.
        # The prompt's forward has already run eagerly; only cuBLAS's handles for the capture's stream are new.
        warm_up_cublas(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # records only: the replay in __call__ runs this step
            self.output = self.model(**{**inputs, **self.buffers})
        self.graph, self.captured, self.objects = graph, self.signature(inputs), objects
        self.captures += 1


@contextlib.contextmanager
def full_attention_within_window(model: torch.nn.Module, longest: int) -> Iterator[bool]:
    """Within, a sliding-window model (Mistral's configs set a 4096-token window, Breeze's too) attends
    without its window when no sequence is longer than the window: the same attention, and a static cache
    of plain StaticLayers, which GraphedDecodeStep can replay. Yields whether the window was lifted."""
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
def graphed_decoding(model: torch.nn.Module, longest: int) -> Iterator[GraphedDecodeStep | None]:
    """Within, transformers' generate replays a CUDA graph of the decode step (GraphedDecodeStep) where it
    would compile one: on a GPU, with a static cache, for sequences of at most `longest` tokens (prompt
    and new tokens). Models with 4-bit (bitsandbytes) layers are left to transformers (their kernels are
    not known to be capture-safe), so is the CPU; then None is yielded."""
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(root.parameters()).device
    if device.type != "cuda" or getattr(root, "hf_quantizer", None) is not None or not hasattr(root, "get_compiled_call"):
        yield None
        return
    step = GraphedDecodeStep(root)
    shadowed = vars(root).get("get_compiled_call")  # an instance attribute of the caller's, put back afterwards
    root.get_compiled_call = lambda compile_config=None: step  # generate's source of its decode-step forward
    try:
        with full_attention_within_window(root, longest):
            yield step
    finally:
        if shadowed is None:
            del root.get_compiled_call
        else:
            root.get_compiled_call = shadowed
