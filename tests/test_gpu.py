"""CUDA checks (`make gpu-check`; skipped without a GPU): the engine on CUDA gives CPU fp32's translations, half
precision keeps BLEU, a fp16 training step scales its gradients, and the server serves on CUDA."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
import sacrebleu
import torch

from seq2seq.config import DecodeConfig
from seq2seq.translator import Translator

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "fr-en-small"
# SEQ2SEQ_DATA: the corpora's folder where ../shared does not travel (the GPU check points it at its bundle)
DATA = Path(os.environ.get("SEQ2SEQ_DATA", ROOT.parent / "shared" / "data")) / "multi30k" / "test_2016_flickr"


def lines(suffix: str, n: int) -> list[str]:
    with gzip.open(f"{DATA}.{suffix}.gz", "rt", encoding="utf-8") as f:
        return [line.strip() for line in f][:n]


@pytest.fixture(scope="module")
def cpu_fp32() -> list[str]:
    translator = Translator.from_checkpoint(MODEL, device="cpu", precision="fp32")
    return [t.text for t in translator.translate(lines("fr", 200), DecodeConfig(beam_size=4))]


def test_cuda_fp32_translates_as_cpu_fp32(cpu_fp32):
    translator = Translator.from_checkpoint(MODEL, device="cuda", precision="fp32")
    got = [t.text for t in translator.translate(lines("fr", 200), DecodeConfig(beam_size=4))]
    same = sum(a == b for a, b in zip(got, cpu_fp32))
    assert same >= 198, f"{200 - same} of 200 translations differ from CPU fp32"  # TF32/kernel order: near ties


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_keeps_bleu(precision):
    src, ref = lines("fr", 1000), lines("en", 1000)
    bleu = {}
    for p in ("fp32", precision):
        translator = Translator.from_checkpoint(MODEL, device="cuda", precision=p)
        hyps = [t.text for t in translator.translate(src, DecodeConfig(beam_size=4))]
        bleu[p] = sacrebleu.corpus_bleu(hyps, [ref]).score
    assert abs(bleu[precision] - bleu["fp32"]) <= 0.3, bleu


def test_fp16_training_step_scales_gradients(tmp_path, copy_corpus):
    from conftest import tiny_config

    from seq2seq.train import main as train_main

    cfg = tiny_config(tmp_path, copy_corpus, max_steps=3, eval_every=3, save_every=3, precision="fp16")
    assert train_main(["--config", cfg, "--out", str(tmp_path / "run"), "--device", "cuda"]) == 0
    state = torch.load(tmp_path / "run" / "checkpoint_00000003.pt", map_location="cpu", weights_only=False)
    assert state["scaler"]["scale"] > 0  # the GradScaler ran and is saved for resuming


def test_the_server_serves_on_cuda():
    from seq2seq_client import TranslatorClient
    from server.app import Server
    from server.config import ServerConfig

    server = Server(ServerConfig(host="127.0.0.1", port=0, metrics_port=-1, device="cuda", model=str(MODEL))).start()
    try:
        assert server.wait_ready(120), server.load_error
        with TranslatorClient(f"127.0.0.1:{server.port}") as c:
            assert c.model_info().device.startswith("cuda")
            assert "dog" in c.translate(["Un chien court dans l'herbe."]).results[0].text.lower()
    finally:
        server.stop(grace=0)
