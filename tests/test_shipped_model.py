"""The shipped model, models/fr-en-small, on CPU: fixed translations of a few sentences, its card's quick BLEU check
(card.json "checks", written by scripts/eval_model_card.py) reproduced, and reduced precision close to fp32.

Skipped only when the model directory is missing; the Multi30k test set must be at ../shared/data (from the root).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seq2seq import DecodeConfig, Translator
from seq2seq.data import read_corpus
from seq2seq.evaluate import keyword_hits, score

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "fr-en-small"
TEST_2016 = ROOT.parent / "shared" / "data" / "multi30k" / "test_2016_flickr"

pytestmark = pytest.mark.skipif(not MODEL.is_dir(), reason=f"no shipped model at {MODEL}")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the cores are shared (training, other tests), and two threads on two busy cores spin;
    one thread takes about the same CPU time on a quiet machine and far less wall time on a busy one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fp32() -> Translator:
    return Translator.from_checkpoint(MODEL, device="cpu", precision="fp32")


def first_pairs(n: int) -> tuple[list[str], list[str]]:
    assert TEST_2016.with_suffix(".fr.gz").is_file(), f"the Multi30k test set is missing: {TEST_2016}.fr.gz"
    ds = read_corpus(str(TEST_2016))
    return list(ds["src"][:n]), list(ds["tgt"][:n])


def bleu(translator: Translator, sources: list[str], references: list[str], config: DecodeConfig) -> float:
    return score([t.text for t in translator.translate(sources, config)], references)["bleu"]


# Lines 1, 5, 10, 13, 23 and 28 of test_2016_flickr.fr.gz, then three everyday sentences; default decoding (beam 4,
# α = 0.6), fp32. Pinned from one run, each checked by hand to be a good translation.
EXPECTED = {
    "Un homme avec un chapeau orange regardant quelque chose.": "A man in an orange hat looking at something.",
    "Des gens réparent le toit d'une maison.": "People are fixing the roof of a house.",
    "Un homme en gilet est assis dans une chaise et tient des magazines.":
        "A man in a vest sits in a chair and holds magazines.",
    "Une femme tenant un plat de nourriture dans une cuisine.": "A woman holding a dish of food in a kitchen.",
    "Une femme fait un saut périlleux sur un trampoline sur la plage.":
        "A woman does a flip on a trampoline on the beach.",
    "Un groupe de garçons asiatiques attendent que la viande soit cuite sur le barbecue.":
        "A group of Asian boys are waiting for meat to be cooked on the barbecue.",
    "Je voudrais un café, s'il vous plaît.": "I'd like a coffee, please.",
    "Où est la gare ?": "Where's the station?",
    "Je ne sais pas.": "I don't know.",
}


def test_sentences_translate_to_their_pinned_english(fp32):
    translations = fp32.translate(list(EXPECTED))
    assert {source: t.text for source, t in zip(EXPECTED, translations)} == EXPECTED


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="known weakness of this model (its card): its vocabulary cuts 'Bonjour' into "
                   "four pieces, and 'Bonjour tout le monde !' comes out as 'Bring everyone.'")
def test_greetings(fp32):
    assert fp32.translate(["Bonjour tout le monde !"])[0].text == "Good morning, everyone."


EVERYDAY = ROOT / "data" / "everyday" / "everyday"


def test_everyday_phrases_score_what_its_card_says(fp32):
    """data/everyday (64 phrases of our own): BLEU and the key-word check within two sentences' worth of the card's
    figures, which scripts/eval_model_card.py computed at the default precision (fp32 here)."""
    sources = EVERYDAY.with_suffix(".fr").read_text(encoding="utf-8").splitlines()
    references = EVERYDAY.with_suffix(".en").read_text(encoding="utf-8").splitlines()
    keywords = EVERYDAY.with_suffix(".keywords").read_text(encoding="utf-8").splitlines()
    assert len(sources) == len(references) == len(keywords) >= 50
    hyps = [t.text for t in fp32.translate(sources)]
    card = {s["metric"]: s["value"] for s in json.loads((MODEL / "card.json").read_text())["scores"]
            if s["test_set"] == "Everyday phrases (ours)"}
    words = 100 * sum(keyword_hits(hyps, keywords)) / len(hyps)
    assert abs(words - card["key words (% of sentences)"]) <= 100 * 2 / len(hyps) + 1e-9
    assert abs(score(hyps, references)["bleu"] - card["BLEU"]) <= 2.0


@pytest.mark.slow
def test_reproduces_the_bleu_check_of_its_card(fp32):
    [check] = json.loads((MODEL / "card.json").read_text())["checks"]
    assert (check["test_set"], check["metric"], check["first_sentences"]) == ("Multi30k test_2016_flickr", "BLEU", 100)
    assert (check["device"], check["precision"]) == ("cpu", "fp32")
    config = DecodeConfig.from_dict(check["decode"])
    assert config == DecodeConfig()  # the check is of default decoding
    ours = bleu(fp32, *first_pairs(check["first_sentences"]), config)
    assert abs(ours - check["value"]) <= 0.5, f"BLEU {ours} on the first 100 sentences, the card says {check['value']}"


# BLEU(precision) - BLEU(fp32) on the whole of test_2016_flickr (1,000 sentences; about 40 s in fp32 on one
# thread, 20 s in bf16 or int8). Slices are too noisy for 0.3. The previous model: the ten 100-sentence slices
# differed by -0.43 to +0.44, 300-sentence slices by 0.00 to +0.11. This model in int8 (86 of the 1,000
# translations differ from fp32): -0.65 on the first 300 sentences, -0.15 on all 1,000 (53.25 against 53.40).
SLICE = 1000
PRECISIONS = ["bf16", "int8"]


@pytest.fixture(scope="module")
def fp32_bleu_on_slice(fp32) -> float:
    return bleu(fp32, *first_pairs(SLICE), DecodeConfig())


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
def test_reduced_precision_bleu_is_within_0_3_of_fp32(precision, fp32_bleu_on_slice):
    translator = Translator.from_checkpoint(MODEL, device="cpu", precision=precision)
    assert translator.precision == precision
    ours = bleu(translator, *first_pairs(SLICE), DecodeConfig())
    assert abs(ours - fp32_bleu_on_slice) <= 0.3, f"{precision} BLEU {ours}, fp32 {fp32_bleu_on_slice}"
