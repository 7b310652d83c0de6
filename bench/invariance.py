"""Which of our kernels give a row the same bits whatever else is in its batch (the decoding engine issue).

    python bench/invariance.py            # fp32 and bf16, on this CPU's torch

For each precision it prints, as "rows that differ / rows compared":
- linear: nn.Linear(256, 1024) on the first M rows of a 256-row batch against the same rows inside it (the GEMM's
  dependence on the batch size M);
- sdpa batch: fused scaled-dot-product attention of the first b queries against the same queries in a batch of 64;
- sdpa padded / explicit padded: attention over Tk real keys against the same keys followed by masked padding, with
  the fused kernel and with the explicit formula softmax(masked Q·Kᵀ/√d)·V (what padding does to a row).
Random inputs, seeded; a zero means bitwise equal. The answers are this CPU's and this torch's (MKL/oneDNN kernels).
"""
import torch
import torch.nn.functional as F


def linear_rows(dtype: torch.dtype) -> dict[int, int]:
    lin = torch.nn.Linear(256, 1024).to(dtype)
    x = torch.randn(256, 256).to(dtype)
    full = lin(x)
    return {m: int((lin(x[:m]) != full[:m]).any(dim=1).sum()) for m in (1, 2, 3, 4, 5, 8, 17, 64)}


def attention_rows(dtype: torch.dtype, tk: int, extra: int) -> tuple[dict[int, int], int, int]:
    q, k, v = (torch.randn(64, 4, n, 64).to(dtype) for n in (1, tk, tk))
    out = F.scaled_dot_product_attention(q, k, v)
    by_batch = {b: int((F.scaled_dot_product_attention(q[:b], k[:b], v[:b]) != out[:b]).flatten(1).any(1).sum())
                for b in (1, 2, 8)}
    k2 = torch.cat([k, torch.randn(64, 4, extra, 64).to(dtype)], 2)
    v2 = torch.cat([v, torch.randn(64, 4, extra, 64).to(dtype)], 2)
    mask = torch.cat([torch.ones(64, 1, 1, tk, dtype=torch.bool), torch.zeros(64, 1, 1, extra, dtype=torch.bool)], -1)
    fused = int((F.scaled_dot_product_attention(q, k2, v2, attn_mask=mask) != out).flatten(1).any(1).sum())
    explicit = (q @ k.transpose(-1, -2) / 8).softmax(-1) @ v
    padded = (q @ k2.transpose(-1, -2) / 8).masked_fill(~mask, float("-inf")).softmax(-1) @ v2
    return by_batch, fused, int((padded != explicit).flatten(1).any(1).sum())


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            name = str(dtype).removeprefix("torch.")
            print(f"{name} linear, first M of 256 rows: {linear_rows(dtype)} (/M)")
            for tk, extra in ((7, 1), (20, 12), (33, 31), (64, 64), (5, 100)):
                by_batch, fused, explicit = attention_rows(dtype, tk, extra)
                print(f"{name} Tk={tk}+{extra} padding: sdpa batch {by_batch}, sdpa padded {fused}/64, "
                      f"explicit padded {explicit}/64")


if __name__ == "__main__":
    main()
