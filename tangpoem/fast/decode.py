"""Generation's decode step replayed as a CUDA graph: no per-kernel CPU cost, and no compiling."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch


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
        from tangpoem.fast.graphs import warm_up_cublas

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
