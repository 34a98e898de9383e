"""torch_reference still computes what it computed when its outputs were pinned (reference_golden.json).

The golden values were recorded from the reference while it equalled the tutorial's original code bit
for bit, before the twins were reshaped. On the machine kind they were recorded on (the same torch and
vector ISA) every loss and the bits of the parameters, the EMA and the chain must be equal: a moved or
reshaped reference that changed one operation's order would fail. On another ISA, torch's matmul
kernels may round differently, so there the check is float32 round-off accumulated over 15 optimizer
steps and a 100-step chain (relative 1e-4 on sums, 1e-5 on losses), which still catches any change
of formula, seed use or order of random draws.
"""

import json

import numpy as np
import pytest

from parity_tests.reference_golden import GOLDEN, reference_outputs

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def outputs():
    return reference_outputs()


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


def same_machine_kind(golden) -> bool:
    import torch

    from ddpm_harness.cpu_isa import vector_isa

    return golden["torch"] == torch.__version__ and golden["isa"] == vector_isa()


def test_losses_of_every_step(outputs, golden):
    assert len(outputs["losses"]) == len(golden["losses"]) == 12  # 3 epochs of 3 full batches and a short one
    if same_machine_kind(golden):
        assert outputs["losses"] == golden["losses"]
    np.testing.assert_allclose(outputs["losses"], golden["losses"], rtol=1e-5)


@pytest.mark.parametrize("what", ["params", "ema"])
def test_parameters_and_ema(outputs, golden, what):
    if same_machine_kind(golden):
        assert outputs[f"{what}_sha256"] == golden[f"{what}_sha256"]
    np.testing.assert_allclose(outputs[f"{what}_sums"], golden[f"{what}_sums"], rtol=1e-4, atol=1e-4)


def test_sampled_chain(outputs, golden):
    if same_machine_kind(golden):
        assert outputs["chain_sha256"] == golden["chain_sha256"]
    np.testing.assert_allclose(outputs["chain_last"], golden["chain_last"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outputs["chain_sum"], golden["chain_sum"], rtol=1e-4)
