"""Export to transformers' MarianMTModel and to CTranslate2: same logits, same greedy translations as ours."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seq2seq import checkpoint as ckpt
from seq2seq.checkpoint import load_model
from seq2seq.config import DecodeConfig
from seq2seq.export import export_marian, main as export_main
from seq2seq.translator import Translator

transformers = pytest.importorskip("transformers")
SENTENCES = ["ba ce di fo", "ka ge da bu", "co fi gu ke ba bo", "da"]


@pytest.fixture(scope="module")
def exported(copy_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "marian"
    assert export_main(["--model", str(copy_model / "best.pt"), "--out", str(out)]) == 0
    return out


def test_transformers_logits_equal_ours_on_random_inputs(copy_model, exported):
    model, tok = load_model(copy_model / "best.pt")
    hf = transformers.MarianMTModel.from_pretrained(exported).eval()
    torch.manual_seed(0)
    src = torch.randint(0, tok.pad_id, (4, 11))
    src[1, 7:] = tok.pad_id
    tgt = torch.randint(0, tok.pad_id, (4, 9))
    tgt[:, 0] = tok.pad_id
    with torch.no_grad():
        ours = model(src, tgt)
        theirs = hf(input_ids=src, attention_mask=src.ne(tok.pad_id).long(), decoder_input_ids=tgt).logits
    assert (ours - theirs)[..., :tok.pad_id].abs().max().item() <= 1e-4
    assert torch.all(ours[..., tok.pad_id] == float("-inf")) and torch.all(theirs[..., tok.pad_id] == float("-inf"))


def test_marian_tokenizer_gives_our_ids(copy_model, exported):
    _, tok = load_model(copy_model / "best.pt")
    hf_tok = transformers.MarianTokenizer.from_pretrained(exported)
    for s in SENTENCES:
        assert hf_tok(s).input_ids == tok.encode(s) + [0]


def test_greedy_outputs_agree_with_transformers_generate(copy_model, exported):
    ours = [t.text for t in Translator.from_checkpoint(copy_model / "best.pt", device="cpu")
            .translate(SENTENCES, DecodeConfig(beam_size=1))]
    hf = transformers.MarianMTModel.from_pretrained(exported).eval()
    hf_tok = transformers.MarianTokenizer.from_pretrained(exported)
    batch = hf_tok(SENTENCES, return_tensors="pt", padding=True)
    out = hf.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=60)
    assert hf_tok.batch_decode(out, skip_special_tokens=True) == ours


@pytest.fixture(scope="module")
def ct2_exported(copy_model, tmp_path_factory) -> Path:
    pytest.importorskip("ctranslate2")
    out = tmp_path_factory.mktemp("export") / "ct2"
    assert export_main(["--format", "ctranslate2", "--model", str(copy_model / "best.pt"), "--out", str(out)]) == 0
    return out


def test_ctranslate2_export_keeps_our_vocabulary(copy_model, ct2_exported):
    _, tok = load_model(copy_model / "best.pt")
    vocabulary = json.loads((ct2_exported / "shared_vocabulary.json").read_text(encoding="utf-8"))
    assert vocabulary == [tok.sp.id_to_piece(i) for i in range(tok.pad_id)]  # <pad> dropped, ids kept
    assert (ct2_exported / "source.spm").read_bytes() == tok.model_proto


@pytest.fixture(scope="module")
def legacy_model(copy_model, tmp_path_factory) -> Path:
    """The copy model with a non-zero <pad> row, as models trained before the <pad> logit was masked have."""
    payload = ckpt.load(copy_model / "best.pt")
    torch.manual_seed(0)
    pad = payload["model"]["embed.tokens.weight"].size(0) - 1
    payload["model"]["embed.tokens.weight"][pad] = torch.randn(payload["model"]["embed.tokens.weight"].size(1))
    path = tmp_path_factory.mktemp("legacy") / "model.pt"
    ckpt.save(path, payload)
    return path


def test_plain_converter_agrees_now_that_the_pad_row_stays_zero(copy_model, exported, tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2")
    model, tok = load_model(copy_model / "best.pt")
    assert torch.all(model.embed.tokens.weight[tok.pad_id] == 0)
    converter = Path(sys.executable).with_name("ct2-transformers-converter")
    subprocess.run([str(converter), "--model", str(exported), "--output_dir", str(tmp_path / "ct2")], check=True,
                   capture_output=True)
    ours = [t.text for t in Translator(model, tok, device="cpu").translate(SENTENCES, DecodeConfig(beam_size=1))]
    ct2 = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu", compute_type="float32")
    results = ct2.translate_batch([tok.pieces(tok.encode(s) + [0]) for s in SENTENCES], beam_size=1)
    assert [tok.sp.decode_pieces(r.hypotheses[0]) for r in results] == ours


def test_ctranslate2_log_probs_equal_ours_from_the_first_step_even_with_a_nonzero_pad_row(legacy_model, tmp_path):
    """CTranslate2 starts the decoder from a zero vector; a model whose <pad> row is not zero starts elsewhere, and
    `--format ctranslate2` folds that start into the decoder's position 0, so the first step still agrees."""
    import ctranslate2

    pytest.importorskip("ctranslate2")
    assert export_main(["--format", "ctranslate2", "--model", str(legacy_model), "--out", str(tmp_path / "ct2")]) == 0
    ct2_exported = tmp_path / "ct2"
    model, tok = load_model(legacy_model)
    assert model.embed.tokens.weight[tok.pad_id].abs().max().item() > 0.1  # else this test could not tell
    src = [tok.encode(s) + [0] for s in SENTENCES]
    tgt = [tok.encode(s) for s in SENTENCES]  # the copy task's reference
    ct2 = ctranslate2.Translator(str(ct2_exported), device="cpu", compute_type="float32")
    theirs = ct2.score_batch([tok.pieces(s) for s in src], [tok.pieces(t) for t in tgt])
    for s, t, r in zip(src, tgt, theirs):
        tgt_in = torch.tensor([[tok.pad_id] + t])
        with torch.no_grad():
            logits = model(torch.tensor([s]), tgt_in)[0].float()
        ours = logits.log_softmax(-1)[torch.arange(len(t) + 1), torch.tensor(t + [0])]
        assert torch.allclose(ours, torch.tensor(r.log_probs), atol=1e-4)


def test_ctranslate2_greedy_outputs_equal_ours(copy_model, ct2_exported):
    import ctranslate2

    translator = Translator.from_checkpoint(copy_model / "best.pt", device="cpu")
    ours = [t.text for t in translator.translate(SENTENCES, DecodeConfig(beam_size=1))]
    tok = translator.tokenizer
    ct2 = ctranslate2.Translator(str(ct2_exported), device="cpu", compute_type="float32")
    results = ct2.translate_batch([tok.pieces(tok.encode(s) + [0]) for s in SENTENCES], beam_size=1)
    assert [tok.sp.decode_pieces(r.hypotheses[0]) for r in results] == ours
    assert ours[:2] == SENTENCES[:2]  # the copy model works, so a dropped first word would show


def test_out_must_be_new_or_empty(copy_model, tmp_path):
    model, tok = load_model(copy_model / "best.pt")
    (tmp_path / "empty").mkdir()
    export_marian(model, tok, tmp_path / "empty")  # an existing empty directory is fine
    assert (tmp_path / "empty" / "config.json").exists()
    with pytest.raises(ValueError, match="not an empty directory"):
        export_marian(model, tok, tmp_path / "empty")


def test_shipped_form_round_trip_fp16_weights_same_translations_and_clear_errors(copy_model, tmp_path):
    out = tmp_path / "shipped"
    assert export_main(["--model", str(copy_model / "best.pt"), "--format", "seq2seq", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "spm.model"]
    (model, _), (shipped, _) = load_model(copy_model / "best.pt"), load_model(out)
    for name, weight in model.state_dict().items():  # fp16 on disk: each weight within fp16 rounding
        assert torch.allclose(shipped.state_dict()[name], weight, rtol=1e-3, atol=1e-4), name
    texts = ["ba ce di fo ga", "ka", "co fi gu ke ba bo de"]
    a = Translator.from_checkpoint(copy_model / "best.pt", device="cpu").translate(texts)
    b = Translator.from_checkpoint(out, device="cpu").translate(texts)
    assert [t.text for t in a] == [t.text for t in b]
    (out / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ckpt.CheckpointError, match="corrupt or unreadable model file .*model.safetensors"):
        load_model(out)
    (out / "spm.model").unlink()
    with pytest.raises(ckpt.CheckpointError, match="has no spm.model"):
        load_model(out)
