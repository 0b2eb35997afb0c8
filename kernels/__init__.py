"""Triton kernels of nano-fleming (logprob.py: log-probs of sampled tokens, forward and backward)."""
