"""lutra: CodeLutra-style iterative preference refinement of code LLMs from execution feedback."""

__version__ = "0.1.0"
