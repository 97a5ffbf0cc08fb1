"""Small pieces both the serving wing (``app``) and the offline one (``quantization``,
``shapes``, ``bench``) use: the CLIP tokenizer writer and the glibc malloc tunables.
Nothing here imports any other part of mixdiff."""
