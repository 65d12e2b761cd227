"""The native tanh-GELU: torch's values and gradients at fp32 and bf16, any layout, and the edges."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from microgpt.gelu import gelu_tanh


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gelu_tanh_matches_torch_forward_and_backward(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    values = torch.cat(
        [torch.randn(5000) * 4, torch.tensor([0.0, 1e-30, -1e-30, 9.0, -9.0, 50.0, -50.0, 1e4, -1e4])]
    )
    x = values.to(dtype).requires_grad_()
    grad = torch.randn(x.shape).to(dtype)
    ours = gelu_tanh(x)
    (ours_grad,) = torch.autograd.grad(ours, x, grad)
    theirs = F.gelu(x, approximate="tanh")
    (theirs_grad,) = torch.autograd.grad(theirs, x, grad)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(ours, theirs, **tol)
    torch.testing.assert_close(ours_grad, theirs_grad, **tol)
    assert ours.dtype == dtype and ours_grad.dtype == dtype


def test_gelu_tanh_takes_strided_input_and_keeps_shape() -> None:
    x = torch.randn(6, 8).t()
    torch.testing.assert_close(gelu_tanh(x), F.gelu(x, approximate="tanh"), atol=1e-5, rtol=1e-5)
    assert gelu_tanh(x).shape == (8, 6)


def test_gelu_tanh_passes_infinities_as_torch_does() -> None:
    x = torch.tensor([float("inf"), float("-inf"), float("nan")])
    torch.testing.assert_close(gelu_tanh(x), F.gelu(x, approximate="tanh"), equal_nan=True)
