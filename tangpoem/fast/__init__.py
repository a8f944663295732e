"""The fast wing: what makes the homework's training and generation faster on a big GPU, and nothing else.

Every lever here computes what the plain path computes (tests/test_train.py and tests/test_gpu.py hold an
equivalence test for each); the config's "levers" section switches them, and only the set-up (train.prepare),
generation (generate.py) and the benchmarks import this package.

    levers.py     the set-up: each lever chosen once, handed to the loop as a mode, a micro-step or a reader
    attention.py  varlen_attention: FlashAttention within each packed row
    fused.py      fused_rms_norm, fused_lora: fewer element-wise kernels
    graphs.py     cuda_graphs: each micro-batch's forward and backward replayed as CUDA graphs
    balance.py    balanced_steps: micro-batches evened out in tokens
    reads.py      deferred_reads: a step's figures read once the next step is queued
    dense.py      dequantize_base, dense_generation, merged export: the NF4 weights dequantized once
    decode.py     static_cache: each generated token's step (forward, decoding rules, choice) one CUDA graph replay

Private APIs it leans on (tested with torch 2.11 and 2.13, transformers 5.17 and 5.24, peft 0.21,
bitsandbytes 0.50); a new version of any of these may move them:
- transformers: `hf_quantizer` and `is_loaded_in_4bit` on a loaded model (dense.py), `config._attn_implementation`
  read by `set_attn_implementation` (attention.py, decode.py), `AttentionInterface` and `AttentionMaskInterface`
  registration with `masking_utils.sdpa_mask` (attention.py, decode.py), `integrations.sdpa_attention.
  sdpa_attention_forward` (decode.py), `cache_utils.StaticLayer` counting its tokens in a device tensor
  (`cumulative_length`, advanced by a replay), the cache argument's name (`past_key_values` in 5.17, `cache`
  later) and a 4-D mask passed through as given (decode.py), `modeling_layers.GradientCheckpointingLayer`
  (levers.py, compile).
- peft: `LoraLayer.lora_variant`, `lora_A`/`lora_B`/`scaling`/`lora_dropout`, `get_delta_weight` (fused.py,
  dense.py); `peft.helpers.disable_input_dtype_casting` (levers.py).
- bitsandbytes: `functional.dequantize_4bit` with a weight's `quant_state` (dense.py).
- torch: `torch.nn.attention.varlen.varlen_attn` (2.10+; attention.py), `torch.cuda.make_graphed_callables`
  with `num_warmup_iters=0`, `torch.cuda.graph.default_capture_stream` (the stream a capture runs on) and
  `gc.freeze` around a capture (graphs.py), `torch.multinomial`'s draws inside a captured graph (decode.py;
  tests/test_gpu.py checks they are the eager draws).
"""
