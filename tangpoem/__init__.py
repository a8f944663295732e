"""tangpoem: fine-tune an LLM to write Tang poems (NTU GenAI HW5 as a library)."""

__version__ = "0.1.0"
