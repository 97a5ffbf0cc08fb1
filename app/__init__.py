"""mixdiff: Stable Diffusion on Xeon CPUs with a per-step precision schedule."""

__version__ = "0.1.0"
