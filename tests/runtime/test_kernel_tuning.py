"""Kernel options: channels_last memory format and cuDNN autotuning, chosen, applied and recorded."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from benchmark.errors import ThreatbenchError
from benchmark.evaluation.loop import evaluate
from benchmark.models.architectures import build
from benchmark.models.defense import Defense
from benchmark.runtime.kernel_tuning import (
    KernelTuning,
    apply_memory_format,
    cudnn_autotune_context,
    resolve_tuning,
)
from benchmark.tools.perf import kernel_tunings, measure_kernel_tunings
from tests.attacks.test_transfer import small_spec
from tests.conftest import requires_fashion, small_mlp

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def conv_defense(seed: int = 0) -> Defense:
    torch.manual_seed(seed)
    return Defense(build("mnist_a", 10), 10, name="A")


def test_auto_picks_channels_last_only_for_convolutions_on_a_gpu():
    conv, mlp = conv_defense(), Defense(small_mlp(), 10)
    assert resolve_tuning(conv, CUDA) == KernelTuning("channels_last", False)
    assert resolve_tuning(mlp, CUDA) == KernelTuning("contiguous", False)
    assert resolve_tuning(conv, CPU) == KernelTuning("contiguous", False)
    assert resolve_tuning(conv, CPU, memory_format="channels_last").memory_format == "channels_last"
    assert resolve_tuning(conv, CUDA, cudnn_autotune=True).cudnn_autotune


def test_bad_kernel_options_are_clear_errors():
    with pytest.raises(ThreatbenchError, match="memory format must be one of auto, contiguous, channels_last"):
        resolve_tuning(conv_defense(), CPU, memory_format="nhwc")
    with pytest.raises(ThreatbenchError, match="--cudnn-autotune needs a CUDA device"):
        resolve_tuning(conv_defense(), CPU, cudnn_autotune=True)


def test_channels_last_changes_the_layout_not_the_function():
    plain, tuned = conv_defense(), apply_memory_format(conv_defense(), KernelTuning("channels_last"))
    convs = [m for m in tuned.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not convs[-1].weight.is_contiguous()   # really NHWC (with one input channel both coincide)
    x = torch.rand(16, 1, 28, 28)
    torch.testing.assert_close(tuned(x), plain(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("architecture", ["pni:mnist_a", "cni:mnist_a"])
def test_weight_noise_models_draw_the_same_noise_in_channels_last(architecture):
    torch.manual_seed(0)
    plain = Defense(build(architecture, 10), 10, randomized=True)
    tuned = apply_memory_format(copy.deepcopy(plain), KernelTuning("channels_last"))
    x = torch.rand(6, 1, 28, 28)
    outputs = []
    for defense in (plain, tuned):
        torch.manual_seed(1)
        outputs.append(defense(x))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)


def test_autotune_context_sets_and_restores_cudnn_benchmark():
    torch.backends.cudnn.benchmark = False
    with cudnn_autotune_context(KernelTuning(cudnn_autotune=True)):
        assert torch.backends.cudnn.benchmark
    assert not torch.backends.cudnn.benchmark


@requires_fashion
def test_a_channels_last_evaluation_is_recorded_and_agrees_with_contiguous():
    spec = small_spec(n=40)
    runs = {fmt: evaluate(conv_defense(), "fashion-mnist", spec=spec, families=("white_box",), progress=False,
                          memory_format=fmt, device="cpu") for fmt in ("contiguous", "channels_last")}
    for fmt, result in runs.items():
        assert result.record["provenance"]["memory_format"] == fmt
        assert result.record["provenance"]["cudnn_autotune"] is False
    plain, tuned = runs["contiguous"].outcomes, runs["channels_last"].outcomes
    assert set(plain) == set(tuned)
    for name in plain:   # float rounding may flip a borderline example, never more
        flipped = int(np.sum(plain[name].correct != tuned[name].correct))
        assert flipped <= 1, f"{name}: {flipped} of 40 examples differ between memory formats"


def test_perf_times_the_floor_under_every_option_the_device_has():
    assert [(t.memory_format, t.cudnn_autotune) for t in kernel_tunings(CUDA)] == [
        ("contiguous", False), ("contiguous", True), ("channels_last", False), ("channels_last", True)]
    defense = conv_defense()
    rows = measure_kernel_tunings(defense, torch.rand(8, 1, 28, 28), torch.arange(8) % 10, steps=2, repeats=2)
    assert [r.tuning for r in rows] == kernel_tunings(CPU)
    assert all(r.floor_seconds > 0 for r in rows) and rows[0].speedup_over(rows[0]) == 1.0
    assert next(defense.parameters()).is_contiguous(), "measuring must not change the caller's model"


@requires_fashion
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_on_a_gpu_auto_evaluates_in_channels_last():
    result = evaluate(conv_defense(), "fashion-mnist", spec=small_spec(n=40), families=("white_box",),
                      progress=False, device="cuda")
    assert result.record["provenance"]["memory_format"] == "channels_last"
