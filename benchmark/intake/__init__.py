"""Submissions: manifests, the Hugging Face Hub, and judging a submitted defense."""
