"""The benchmark's modules; `python bench/run.py` is the command (see bench/README.md)."""
