"""The early-exit gate's confidence, max softmax probability in float32, computed without a softmax.

max_v softmax(x)_v = exp(max x − logsumexp x) = 1 / Σ_v exp(x_v − max x). The fork computes
`softmax(x, float32).amax(-1)`, which writes a float32 [rows, vocab] result and runs one thread block per
row: with 36 rows and a 128,256-entry vocabulary the H100 measured 123 µs per call, 4.5 % of a batch
(docs/plugin.md, "Per-step cost"). On CUDA a Triton kernel instead splits every row into CHUNKS pieces
(rows × CHUNKS programs fill the GPU), each reading its piece once for a running max and sum of exponentials
(online softmax); a [rows, CHUNKS] combine gives 1 / Σ. Same value as the fork's up to float32 rounding
(a few ulp): a confidence within ~1e-6 of the threshold could compare differently. Elsewhere (the CPU
build, no Triton), the fork's own expression.
"""
from __future__ import annotations

CHUNKS = 32  # pieces per row: 36 rows x 32 = 1,152 programs for the H100's 132 SMs
BLOCK = 1024  # elements a program loads per iteration

_kernel = None


def _triton_kernel():
    """Compile-on-first-use; None where Triton cannot run (no GPU backend)."""
    global _kernel
    if _kernel is None:
        import triton
        import triton.language as tl

        @triton.jit
        def chunk_max_sumexp(x_ptr, row_stride, vocab, chunk, max_ptr, sum_ptr, CHUNKS: tl.constexpr,
                             BLOCK: tl.constexpr):
            row = tl.program_id(0)
            piece = tl.program_id(1)
            start = piece * chunk
            end = tl.minimum(start + chunk, vocab)
            run_max = tl.full((), float("-inf"), tl.float32)
            run_sum = tl.zeros((), tl.float32)
            for offset in range(start, end, BLOCK):
                idx = offset + tl.arange(0, BLOCK)
                x = tl.load(x_ptr + row * row_stride + idx, mask=idx < end, other=float("-inf")).to(tl.float32)
                new_max = tl.maximum(run_max, tl.max(x, 0))
                # An all -inf stretch so far (masked logits) must not make exp(-inf - -inf) = NaN.
                shift = tl.where(new_max == float("-inf"), 0.0, new_max)
                run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(x - shift), 0)
                run_max = new_max
            tl.store(max_ptr + row * CHUNKS + piece, run_max)
            tl.store(sum_ptr + row * CHUNKS + piece, run_sum)

        _kernel = chunk_max_sumexp
    return _kernel


def max_softmax(logits):
    """Per row, the largest softmax probability of `logits` [rows, vocab], as float32 [rows].

    Raises:
        Nothing of its own; Triton compile errors propagate (a broken GPU build must fail loudly).
    """
    import torch

    if not logits.is_cuda:
        return logits.softmax(dim=-1, dtype=torch.float32).amax(dim=-1)
    logits = logits.contiguous()
    rows, vocab = logits.shape
    chunk = -(-vocab // CHUNKS)
    piece_max = torch.empty((rows, CHUNKS), dtype=torch.float32, device=logits.device)
    piece_sum = torch.empty_like(piece_max)
    _triton_kernel()[(rows, CHUNKS)](logits, logits.stride(0), vocab, chunk, piece_max, piece_sum,
                                     CHUNKS=CHUNKS, BLOCK=BLOCK)
    row_max = piece_max.amax(dim=-1, keepdim=True)
    # A piece past the vocabulary's end (vocab < CHUNKS) has max -inf and sum 0: exp(-inf) * 0 = 0, no NaN.
    total = (piece_sum * torch.exp(piece_max - row_max)).sum(dim=-1)
    return total.reciprocal()
