"""Shared test set-up. Kernel tests need root and working BPF: without them they fail
loudly (an error at collection time for that directory), never skip."""
