"""The gate's confidence kernel against the fork's expression, softmax(float32).amax (needs a CUDA GPU)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from nwor.plugin.confidence import max_softmax  # noqa: E402


def test_cpu_path_is_the_forks_expression():
    logits = torch.randn(4, 50) * 5
    assert torch.equal(max_softmax(logits), logits.softmax(dim=-1, dtype=torch.float32).amax(dim=-1))


@pytest.mark.gpu
@pytest.mark.parametrize("rows,vocab,dtype", [(36, 128256, torch.float32), (36, 128256, torch.bfloat16),
                                              (1, 1000, torch.float32), (5, 17, torch.float32)])
def test_kernel_matches_the_forks_confidence(rows, vocab, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gen = torch.Generator(device="cuda").manual_seed(0)
    # Sharp rows (confidence near 1), flat rows (near 1/vocab) and rows with masked (-inf) entries.
    logits = torch.randn(rows, vocab, device="cuda", generator=gen) * torch.linspace(0.1, 30, rows, device="cuda")[:, None]
    logits[0, : vocab // 2] = float("-inf")
    logits = logits.to(dtype)
    want = logits.softmax(dim=-1, dtype=torch.float32).amax(dim=-1)
    got = max_softmax(logits)
    assert got.dtype == torch.float32 and got.shape == (rows,)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
