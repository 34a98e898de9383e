"""Weight conversion both ways, and the model forward pass with ported weights at every step t."""

import re

import jax
import numpy as np
import pytest
import torch

from jax_ddpm.convert import ConversionError, flax_to_torch, torch_to_flax
from jax_ddpm.model import init_params
from parity_tests import layers
from parity_tests.compare import FLOAT32, assert_pairs_close, flat_params, to_numpy
from torch_reference.model import ConditionalModel

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("n_outputs", [2, 4])
def test_torch_to_flax_round_trip_is_exact(precision, n_outputs):
    model, _ = layers.ported_model(precision, n_outputs)
    out_ref = model.state_dict()
    out_ans = flax_to_torch(torch_to_flax(out_ref))
    assert out_ans.keys() == out_ref.keys()
    for key in out_ref:
        assert out_ans[key].dtype == out_ref[key].dtype, key
        assert torch.equal(out_ans[key], out_ref[key]), key


@pytest.mark.parametrize("n_outputs", [2, 4])
def test_flax_to_torch_round_trip_is_exact(n_outputs):
    out_ref = flat_params(init_params(jax.random.PRNGKey(0), layers.N_STEPS, n_outputs))
    state_dict = flax_to_torch(init_params(jax.random.PRNGKey(0), layers.N_STEPS, n_outputs))
    ConditionalModel(layers.N_STEPS, n_outputs).load_state_dict(state_dict)  # strict: every key, every shape
    out_ans = flat_params(torch_to_flax(state_dict))
    assert out_ans.keys() == out_ref.keys()
    for key in out_ref:
        np.testing.assert_array_equal(out_ans[key], out_ref[key], err_msg=key)


def test_conversion_transposes_linear_weights():
    model, params = layers.ported_model(FLOAT32)
    np.testing.assert_array_equal(to_numpy(params["lin2"]["lin"]["kernel"]), to_numpy(model.lin2.lin.weight).T)
    np.testing.assert_array_equal(to_numpy(params["lin1"]["embed"]["embedding"]), to_numpy(model.lin1.embed.weight))


def _state_dict():
    return dict(ConditionalModel(layers.N_STEPS).state_dict())


def test_torch_to_flax_names_a_wrong_key():
    state_dict = _state_dict()
    state_dict["lin1.linear.weight"] = state_dict.pop("lin1.lin.weight")
    with pytest.raises(
        ConversionError,
        match=re.escape(
            "state dict does not match ConditionalModel: missing ['lin1.lin.weight'], unexpected ['lin1.linear.weight']"
        ),
    ):
        torch_to_flax(state_dict)


def test_torch_to_flax_names_a_missing_and_an_extra_key():
    state_dict = _state_dict()
    del state_dict["lin4.bias"]
    state_dict["lin5.bias"] = torch.zeros(2)
    with pytest.raises(ConversionError, match=re.escape("missing ['lin4.bias'], unexpected ['lin5.bias']")):
        torch_to_flax(state_dict)


@pytest.mark.parametrize(
    "key, shape, message",
    [
        ("lin2.lin.weight", (128, 64), "lin2.lin.weight has shape (128, 64), expected (128, 128)"),
        ("lin3.embed.weight", (50, 128), "lin3.embed.weight has shape (50, 128), expected (100, 128)"),
        ("lin4.weight", (4, 128), "lin4.weight has shape (4, 128), expected (2, 128)"),
    ],
)
def test_torch_to_flax_names_a_wrong_shape(key, shape, message):
    state_dict = _state_dict()
    state_dict[key] = torch.zeros(shape)
    with pytest.raises(ConversionError, match=re.escape(message)):
        torch_to_flax(state_dict)


def test_flax_to_torch_names_a_wrong_key():
    params = init_params(jax.random.PRNGKey(0), layers.N_STEPS)
    params["lin3"]["gamma"] = params["lin3"].pop("embed")
    with pytest.raises(
        ConversionError,
        match=re.escape(
            "Flax params does not match ConditionalModel: missing ['lin3.embed.embedding'], "
            "unexpected ['lin3.gamma.embedding']"
        ),
    ):
        flax_to_torch(params)


def test_flax_to_torch_names_a_wrong_shape_in_flax_layout():
    params = init_params(jax.random.PRNGKey(0), layers.N_STEPS)
    params["lin2"]["lin"]["kernel"] = params["lin2"]["lin"]["kernel"][:64]
    with pytest.raises(ConversionError, match=re.escape("lin2.lin.kernel has shape (64, 128), expected (128, 128)")):
        flax_to_torch(params)


@pytest.mark.parametrize("n_outputs", [2, 4])
def test_forward_at_every_step(precision, n_outputs):
    # Three matmuls of width 128 with softplus between: measured <= 1.9 eps of max|output| in both
    # precisions (summation order differs between torch's and XLA's matmuls).
    assert_pairs_close(layers.forward_pairs(precision, n_outputs), rel=8 * precision.eps)
