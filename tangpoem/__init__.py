"""tangpoem: fine-tune an LLM to write Tang poems (NTU GenAI HW5 as a library)."""

from tangpoem.console import quiet_libraries

__version__ = "0.1.0"

quiet_libraries()  # the libraries' messages nobody can act on, filtered precisely (tangpoem/console.py says why)
