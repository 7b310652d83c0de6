"""Loss, learning rate, tokenizer and config round trips (STYLE §6)."""
import pytest
import torch

from seq2seq.config import ConfigError, DataConfig, DecodeConfig, ModelConfig, TrainConfig
from seq2seq.loss import label_smoothed_loss, smoothed_targets
from seq2seq.optim import learning_rate
from seq2seq.tokenizer import Tokenizer


def test_smoothed_distribution():
    q = smoothed_targets(torch.tensor([2, 0]), vocab_size=6, epsilon=0.1, pad_id=5)
    assert torch.allclose(q.sum(1), torch.ones(2))
    assert q[0, 2] == pytest.approx(0.9) and q[0, 5] == 0 and q[0, 0] == pytest.approx(0.1 / 4)


def test_label_smoothed_loss_is_cross_entropy_with_q_and_ignores_pad():
    torch.manual_seed(0)
    logits = torch.randn(4, 6)
    target = torch.tensor([2, 0, 5, 3])  # the third is padding
    loss, nll, n = label_smoothed_loss(logits, target, 0.1, pad_id=5)
    q = smoothed_targets(target[[0, 1, 3]], 6, 0.1, 5)
    lp = logits[[0, 1, 3]].log_softmax(-1)
    assert n.item() == 3
    assert loss.item() == pytest.approx(-(q * lp).sum().item(), rel=1e-5)
    assert nll.item() == pytest.approx(-lp.gather(1, target[[0, 1, 3], None]).sum().item(), rel=1e-5)


def test_learning_rate_peaks_at_warmup():
    lrs = [learning_rate(s, 512, 4000) for s in range(1, 20001)]
    assert max(range(len(lrs)), key=lrs.__getitem__) + 1 == 4000
    assert lrs[3999] == pytest.approx(512 ** -0.5 * 4000 ** -0.5)
    assert lrs[0] == pytest.approx(512 ** -0.5 * 4000 ** -1.5)
    assert learning_rate(16000, 512, 4000) == pytest.approx(lrs[3999] / 2)


def test_configs_round_trip_and_reject_unknown_keys():
    for cfg in (ModelConfig.base(100), DataConfig(train=("a", "b")), TrainConfig(), DecodeConfig()):
        assert type(cfg).from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown ModelConfig key"):
        ModelConfig.from_dict({"vocab_size": 10, "d_modle": 8})
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(100, d_model=30, n_heads=4)


def test_tokenizer_round_trip_french_and_no_break_spaces():
    text = ["Un garçon mange un œuf « très » frais à côté de l'hôtel ?", "A boy eats an egg.", "Où est-il ?"] * 50
    tok = Tokenizer.train(text, vocab_size=60)
    assert tok.decode(tok.encode("Un garçon « œuf » à côté ?")) == "Un garçon « œuf » à côté ?"
    assert tok.encode("Où est-il\u202f?") == tok.encode("Où est-il ?") == tok.encode("Où est-il\u00a0?")
    assert tok.pad_id == tok.vocab_size - 1 and tok.encode("x")[-1] != tok.pad_id
    assert tok.decode([*tok.encode("Un garçon"), 0, *tok.encode("jamais")]) == "Un garçon"


def test_label_smoothed_loss_gradient_is_softmax_minus_q():
    torch.manual_seed(1)
    logits = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, 6, 4])  # 6 is <pad>: no gradient for that row
    loss, _, _ = label_smoothed_loss(logits, target, 0.1, pad_id=6)
    loss.backward()
    q = smoothed_targets(target[[0, 2]], 7, 0.1, 6).double()
    expected = logits.detach()[[0, 2]].softmax(-1) - q
    assert torch.allclose(logits.grad[[0, 2]], expected, atol=1e-10)
    assert torch.all(logits.grad[1] == 0)
    assert torch.autograd.gradcheck(lambda x: label_smoothed_loss(x, target, 0.1, 6)[0], (logits.detach().requires_grad_(),))
