"""capcalc: capacity and roofline calculator for LLM inference."""

__version__ = "0.1.0"
