"""Offline distillation of a model's UNet into a few-step student (``mixdiff distill``).
Like ``quantization``, a library: it never imports the app."""
