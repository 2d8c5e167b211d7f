"""Architectures, the defense interface, noise injection, smoothing, weight loading and training."""
