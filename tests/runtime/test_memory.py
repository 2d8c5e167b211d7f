"""Out-of-memory fallback: the batch is halved, with a message, until a forward+backward fits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.models.defense import Defense
from benchmark.runtime.memory import BatchFitError, fit_batch_size


class _Limited(nn.Module):
    """Raises torch's out-of-memory error for batches above `limit` images."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.linear, self.seen = limit, nn.Linear(784, 10), []

    def forward(self, x):
        self.seen.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate for {x.shape[0]} images")
        return self.linear(x.flatten(1))


def test_the_batch_is_halved_until_it_fits_and_each_fallback_is_said():
    model, messages = _Limited(300), []
    batch = fit_batch_size(Defense(model, 10), torch.rand(4, 1, 28, 28), 1024, say=messages.append)
    assert batch == 256 and model.seen == [1024, 512, 256]
    assert messages[0] == "batch of 1024 images does not fit in cpu memory (out of memory); trying 512"
    assert len(messages) == 2


def test_a_batch_that_fits_is_kept_and_nothing_fitting_is_a_clear_error():
    assert fit_batch_size(Defense(_Limited(5000), 10), torch.rand(2, 1, 28, 28), 1000, say=print) == 1000
    with pytest.raises(BatchFitError, match="even one image does not fit in cpu memory"):
        fit_batch_size(Defense(_Limited(0), 10), torch.rand(2, 1, 28, 28), 8, say=lambda _: None)
