"""The model's equations and masks, pinned by small values (STYLE §6)."""
import math

import pytest
import torch

from seq2seq import ModelConfig, Transformer
from seq2seq.attention import attention
from seq2seq.layers import sinusoidal_positions

V = 40
PAD = V - 1


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig.tiny(V).replace(**overrides)).eval()


def test_attention_hand_computed_2x2():
    q = k = torch.eye(2).view(1, 1, 2, 2)
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    # scores = I / √2, so each row is softmax([0.70711, 0]) = [0.66976, 0.33024] (or reversed)
    expected_w = torch.tensor([[0.669762, 0.330238], [0.330238, 0.669762]])
    expected_out = torch.tensor([[1.660477, 2.660477], [2.339523, 3.339523]])
    out, w = attention(q, k, v, need_weights=True)
    assert torch.allclose(w[0, 0], expected_w, atol=1e-5)
    assert torch.allclose(out[0, 0], expected_out, atol=1e-5)
    fused, _ = attention(q, k, v)  # the fused kernel gives the same output
    assert torch.allclose(fused[0, 0], expected_out, atol=1e-5)


def test_attention_mask_and_causal_zero_weights():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 3, 4) for _ in range(3))
    mask = torch.tensor([True, True, False]).view(1, 1, 1, 3)
    _, w = attention(q, k, v, mask, need_weights=True)
    assert torch.all(w[..., 2] == 0) and torch.allclose(w.sum(-1), torch.ones(1, 2, 3))
    _, w = attention(q, k, v, causal=True, need_weights=True)
    assert w[0, 0, 0, 1] == 0 and w[0, 0, 0, 2] == 0 and w[0, 0, 1, 2] == 0 and w[0, 0, 0, 0] == 1


def test_positional_encoding_values():
    pe = sinusoidal_positions(3, 4)  # [sin(pos·ω0), sin(pos·ω1), cos(pos·ω0), cos(pos·ω1)], ω = 1, 0.01
    assert torch.allclose(pe[0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert torch.allclose(pe[1], torch.tensor([math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]))
    assert pe[2, 1].item() == pytest.approx(0.0199987, abs=1e-6)
    big = sinusoidal_positions(50, 512)  # the paper's frequency for 2i = 256: 10000^(-0.5) = 0.01
    assert big[49, 128].item() == pytest.approx(math.sin(49 * 0.01), abs=1e-6)


def test_parameter_counts_match_table_3():
    assert abs(Transformer(ModelConfig.base(37000)).num_parameters() / 65e6 - 1) < 0.05
    assert abs(Transformer(ModelConfig.big(37000)).num_parameters() / 213e6 - 1) < 0.05


def test_embeddings_are_shared_and_pad_row_is_zero():
    m = tiny_model()
    assert torch.all(m.embed.tokens.weight[PAD] == 0)
    y = torch.randn(2, 32)
    logits = m.project(y)
    # allclose: MKL may sum a (2, 32) × (32, 40) product in another order than the (32, 39) one (about 1e-6 apart)
    assert torch.allclose(logits[:, :PAD], y @ m.embed.tokens.weight[:PAD].t(), atol=1e-5)
    assert torch.all(logits[:, PAD] == float("-inf"))  # <pad> is never an output


def test_no_future_leak():
    m = tiny_model()
    src = torch.randint(0, PAD, (2, 6))
    tgt = torch.randint(0, PAD, (2, 7))
    changed = tgt.clone()
    changed[:, 4:] = (changed[:, 4:] + 1) % PAD
    with torch.no_grad():
        a, b = m(src, tgt), m(src, changed)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)
    assert not torch.allclose(a[:, 4:], b[:, 4:], atol=1e-3)


def test_padding_does_not_change_real_outputs():
    m = tiny_model()
    src = torch.randint(0, PAD, (1, 5))
    tgt = torch.randint(0, PAD, (1, 4))
    padded_src = torch.cat([src, torch.full((1, 3), PAD)], 1)
    padded_tgt = torch.cat([tgt, torch.full((1, 2), PAD)], 1)
    with torch.no_grad():
        a, b = m(src, tgt), m(padded_src, padded_tgt)
    assert torch.allclose(a, b[:, :4], atol=1e-5)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_incremental_decoding_equals_full_forward_also_after_reorder(pre_norm):
    m = tiny_model(pre_norm=pre_norm)
    src = torch.randint(0, PAD, (3, 6))
    src[1, 4:] = PAD
    tgt = torch.randint(0, PAD, (3, 7))
    tgt[:, 0] = PAD  # the start symbol
    with torch.no_grad():
        full = m(src, tgt).log_softmax(-1)  # (B, T, V)
        memory = m.encode(src)
        state = m.init_state(memory, max_len=2)  # small on purpose: the cache must grow
        steps = [m.decode_step(tgt[:, t], memory, state) for t in range(4)]
        idx = torch.tensor([2, 0, 0])  # reorder along the batch, as beams do
        memory, state = memory.reorder(idx), state.reorder(idx)
        steps = [s[idx] for s in steps] + [m.decode_step(tgt[idx, t], memory, state) for t in range(4, 7)]
    inc = torch.stack(steps, 1)
    assert torch.allclose(inc[..., :PAD], full[idx][..., :PAD], atol=1e-5)
    assert torch.all(inc[..., PAD] == float("-inf"))


def test_attention_weights_rows_sum_to_one():
    m = tiny_model()
    src = torch.randint(0, PAD, (2, 5))
    src[0, 3:] = PAD
    tgt = torch.randint(0, PAD, (2, 4))
    with torch.no_grad():
        m(src, tgt, need_weights=True)
    cross = m.cross_attention[0]  # (B, H, T, S)
    assert torch.allclose(cross.sum(-1), torch.ones(2, 2, 4), atol=1e-6)
    assert torch.all(cross[0, :, :, 3:] == 0)
    assert torch.all(m.decoder_attention[0][..., 0, 1:] == 0)  # the first target position sees only itself


def test_keep_mask_gives_the_same_logits_at_kept_positions():
    m = tiny_model()
    src = torch.randint(0, PAD, (2, 5))
    tgt = torch.randint(0, PAD, (2, 4))
    keep = torch.tensor([[True, True, True, False], [True, False, False, False]])
    with torch.no_grad():
        assert torch.allclose(m(src, tgt, tgt_keep_mask=keep), m(src, tgt)[keep], atol=1e-6)


def test_pad_row_gets_no_gradient_so_the_start_embedding_stays_zero():
    from seq2seq.loss import label_smoothed_loss

    m = tiny_model().train()
    src = torch.randint(0, PAD, (2, 5))
    tgt_in = torch.cat([torch.full((2, 1), PAD), torch.randint(0, PAD, (2, 3))], 1)
    tgt_out = torch.randint(0, PAD, (2, 4))
    loss, _, _ = label_smoothed_loss(m(src, tgt_in).flatten(0, 1), tgt_out.flatten(), 0.1, PAD)
    loss.backward()
    grad = m.embed.tokens.weight.grad
    assert torch.all(grad[PAD] == 0) and grad[:PAD].abs().sum() > 0


def test_attention_padding_mask_with_causal_hand_computed():
    q = k = torch.zeros(1, 1, 3, 1)  # equal scores: each query averages the values it may see
    v = torch.tensor([1.0, 2.0, 4.0]).view(1, 1, 3, 1)
    mask = torch.tensor([True, False, True]).view(1, 1, 1, 3)  # key 1 is padding
    expected = torch.tensor([1.0, 1.0, 2.5])  # keys {0}, {0}, {0, 2}; without causality all three are 2.5
    for need_weights in (False, True):
        out, _ = attention(q, k, v, mask, causal=True, need_weights=need_weights)
        assert torch.allclose(out.flatten(), expected, atol=1e-6), need_weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tq", [5, 3])  # 3: the queries are the last 3 of 5 positions (a cache of 2 before them)
def test_attention_padding_mask_with_causal_never_sees_the_future(tq, dtype):
    torch.manual_seed(0)
    tk, cut = 5, 1  # query i sees keys up to i + tk - tq: change every key after the last one query `cut` sees
    q, k, v = (torch.randn(2, 2, n, 4, dtype=dtype) for n in (tq, tk, tk))
    mask = torch.tensor([[True] * 5, [True, True, True, True, False]]).view(2, 1, 1, 5)  # sentence 1: padded
    k2, v2 = k.clone(), v.clone()
    k2[..., cut + tk - tq + 1:, :] += 1.0
    v2[..., cut + tk - tq + 1:, :] -= 3.0
    # The fused kernel (no weights, no backward), the explicit formula, and on CPU bf16 with a backward the explicit
    # formula without weights.
    paths = {"fused": (torch.no_grad, False), "explicit": (torch.no_grad, True)}
    if dtype == torch.bfloat16:
        paths["bf16 backward"] = (torch.enable_grad, False)
    outs = {}
    for name, (grad_mode, need_weights) in paths.items():
        with grad_mode():
            a, _ = attention(q, k, v, mask, causal=True, need_weights=need_weights)
            b, _ = attention(q, k2, v2, mask, causal=True, need_weights=need_weights)
        assert torch.equal(a[..., :cut + 1, :], b[..., :cut + 1, :]), name
        assert not torch.allclose(a[..., cut + 1:, :], b[..., cut + 1:, :], atol=1e-2), name  # later ones see it
        outs[name] = a.float()
    for name, out in outs.items():
        assert torch.allclose(out, outs["fused"], atol=1e-5 if dtype == torch.float32 else 2e-2), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_attention_equals_the_masked_formula_bit_for_bit(dtype):
    from seq2seq.attention import additive_mask, step_attention
    torch.manual_seed(0)
    b, h, tk, d = 3, 2, 5, 64  # d_k = 64: the scale 1/8 is exact, so baddbmm must give attention()'s very bits
    q, k, v = torch.randn(b, h, 1, d, dtype=dtype), torch.randn(b, h, tk, d, dtype=dtype), torch.randn(
        b, h, tk, d, dtype=dtype)
    keep = torch.tensor([[True] * 5, [True, True, True, False, False], [True, False, False, False, False]])
    expected, expected_w = attention(q, k, v, keep[:, None, None, :], need_weights=True)  # the explicit formula
    out, w = step_attention(q, k, v, additive_mask(keep, h, dtype), need_weights=True)
    assert torch.equal(out, expected) and torch.equal(w, expected_w)
    assert torch.all(w[2, :, 0, 1:] == 0) and torch.allclose(w.float().sum(-1), torch.ones(b, h, 1), atol=1e-2)
    assert additive_mask(keep, h, dtype).shape == (b * h, 1, tk)


def test_memory_reorder_in_place_equals_a_copy():
    """Sentences that leave are replaced by the last ones (decoding.hypothesis.survivors): few rows move, so
    Memory.reorder copies only those, in the same buffers; the result must be rows idx, then zero padding rows."""
    m = tiny_model()
    from seq2seq.decoding.hypothesis import survivors
    src = torch.randint(1, PAD, (32, 6))
    src[3, 4:] = PAD
    idx = torch.tensor(survivors([i in (2, 17, 30) for i in range(32)]))  # 29 rows: 29 and 31 fill 2 and 17
    with torch.no_grad():
        memory = m.encode(src)  # keys and values are views of one projection, not contiguous: ...
        buffer = memory.cross_kv[0][0].data_ptr()
        memory = memory.reorder(torch.arange(32))
        assert memory.cross_kv[0][0].data_ptr() != buffer  # ... copied once (attention would copy them every step)
        expected = [(k[idx].clone(), v[idx].clone()) for k, v in memory.cross_kv]
        buffer = memory.cross_kv[0][0].data_ptr()
        fast = memory.reorder(idx)
    assert fast.cross_kv[0][0].data_ptr() == buffer  # in place: no new buffer
    assert idx[2] == 29 and idx[17] == 31 and idx.numel() == 29
    assert fast.rows == 29 and fast.src_pad_mask.shape == (32, 6)  # 29 rows padded to 32
    assert torch.equal(fast.src_pad_mask[:29], src[idx].eq(PAD)) and not fast.src_pad_mask[29:].any()
    for (k, v), (ek, ev) in zip(fast.cross_kv, expected):
        assert torch.equal(k[:29], ek) and torch.equal(v[:29], ev)
        assert not k[29:].any() and not v[29:].any()  # padding rows: zero keys and values
    with torch.no_grad():
        drained = fast.reorder(torch.arange(8))  # 8 rows of 32: the buffers are let go, not kept as a view
    assert drained.cross_kv[0][0].untyped_storage().nbytes() == drained.cross_kv[0][0].numel() * 4


def test_memory_reorder_in_place_takes_in_joining_rows():
    """Two rows leave and three narrower ones join into the free rows of the same buffers."""
    from seq2seq.decoding.hypothesis import survivors
    m = tiny_model()
    src, new_src = torch.randint(1, PAD, (12, 6)), torch.randint(1, PAD, (3, 4))
    new_src[1, 2:] = PAD
    idx = torch.tensor(survivors([i in (0, 5) for i in range(12)]))  # 10 rows kept, + 3 = 13 of 16
    with torch.no_grad():
        memory, joined = m.encode(src), m.encode(new_src)
        memory = memory.reorder(torch.arange(12))  # padded to 16 rows: room for the joining ones
        expected = [(k[idx].clone(), v[idx].clone()) for k, v in memory.cross_kv]
        buffer = memory.cross_kv[0][0].data_ptr()
        out = memory.reorder(idx, joined)
    assert out.cross_kv[0][0].data_ptr() == buffer and out.rows == 13 and out.src_pad_mask.shape == (16, 6)
    assert torch.equal(out.src_pad_mask[:10], src[idx].eq(PAD))
    assert torch.equal(out.src_pad_mask[10:13, :4], new_src.eq(PAD)) and out.src_pad_mask[10:13, 4:].all()
    assert not out.src_pad_mask[13:].any()
    for (k, v), (ek, ev), (jk, jv) in zip(out.cross_kv, expected, joined.cross_kv):
        assert torch.equal(k[:10], ek) and torch.equal(v[:10], ev)
        assert torch.equal(k[10:13, :, :4], jk) and torch.equal(v[10:13, :, :4], jv)
        assert not k[10:13, :, 4:].any() and not k[13:].any() and not v[13:].any()
