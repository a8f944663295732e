"""The course prompt, built in exactly one place for training and generation alike."""

from __future__ import annotations

from typing import Any

SYSTEM_PROMPT = "You are a helpful assistant and good at writing Tang poem. 你是一個樂於助人的助手且擅長寫唐詩。"
INSTRUCTION = "以下是一首唐詩的第一句話，請用你的知識判斷並完成整首詩。"  # every course row has this instruction


def course_prompt(instruction: str, poem_input: str) -> str:
    """The homework's Llama-2 style prompt: a <<SYS>> block, the instruction and the first couplet.

    Exactly the text of the homework's `generate_training_data` and `evaluate`; the model's answer
    follows `[/INST]` (the tokenizer adds BOS; nobody adds EOS to a prompt).
    """
    return (
        "[INST] <<SYS>>\n"
        f"{SYSTEM_PROMPT}\n"
        "<</SYS>>\n"
        "\n"
        f"{instruction}\n"
        f"{poem_input}\n"
        "[/INST]"
    )


def chat_messages(instruction: str, poem_input: str) -> list[dict[str, str]]:
    """The same request as chat messages, for models whose tokenizer has a chat template."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{instruction}\n{poem_input}"},
    ]


def build_prompt(tokenizer: Any, instruction: str, poem_input: str, mode: str = "course") -> str:
    """The prompt text for one row, in the configured mode ("course" or "chat_template")."""
    if mode == "course":
        return course_prompt(instruction, poem_input)
    if mode == "chat_template":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt_mode 'chat_template' needs a tokenizer with a chat template; use 'course'")
        return tokenizer.apply_chat_template(
            chat_messages(instruction, poem_input), tokenize=False, add_generation_prompt=True
        )
    raise ValueError(f"unknown prompt mode {mode!r}")
