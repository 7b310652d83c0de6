"""The model card's score table, as `seq2seq-eval` prints it: runs `seq2seq-eval --json` (beam 4, the defaults) on
each test set, prints a Markdown table with the signatures, and writes the scores into MODEL/card.json (which the
server's GetModelInfo returns). It also records a quick check there ("checks": BLEU of a 100-sentence slice, fp32 on
CPU) that tests/test_shipped_model.py recomputes in seconds.

    python scripts/eval_model_card.py --model models/fr-en-small
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the project root
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
from seq2seq.evaluate import keyword_hits  # noqa: E402
TEST_SETS = {  # name in the card -> corpus prefix (none of the held-out sets)
    "Multi30k test_2016_flickr": DATA / "multi30k" / "test_2016_flickr",
    "Multi30k test_2017_flickr": DATA / "multi30k" / "test_2017_flickr",
    "Tatoeba test v2021-08-07": DATA / "tatoeba" / "test_v2021-08-07",
    "WMT newstest2013": DATA / "wmt_news" / "newstest2013",
    "FLORES-200 devtest": DATA / "flores200" / "devtest",
    "NTREX-128 (newstest2019)": DATA / "ntrex128" / "newstest2019",
    "TICO-19 test": DATA / "tico19" / "test",
    "Everyday phrases (ours)": ROOT / "data" / "everyday" / "everyday",  # + its key-word check (data/everyday)
}

CHECK_SET, CHECK_SENTENCES = "Multi30k test_2016_flickr", 100  # the slice of the quick check


def bleu_check(model: str, sentences: int = CHECK_SENTENCES) -> dict:
    """card.json's "checks" entry: BLEU of the first `sentences` pairs of CHECK_SET, default decoding (beam 4), fp32 on
    CPU, computed in-process exactly as `command` computes it (which the entry records, with the decoding settings)."""
    from seq2seq.config import DecodeConfig
    from seq2seq.data import read_corpus
    from seq2seq.evaluate import score
    from seq2seq.translate import translate_lines
    from seq2seq.translator import Translator

    translator = Translator.from_checkpoint(model, device="cpu", precision="fp32", max_input_tokens=100_000)
    ds = read_corpus(str(TEST_SETS[CHECK_SET]))
    sources, references = list(ds["src"][:sentences]), list(ds["tgt"][:sentences])
    config = DecodeConfig()
    result = score(translate_lines(translator, sources, config, use_json=False), references)
    data = os.path.relpath(TEST_SETS[CHECK_SET], ROOT)
    return {"test_set": CHECK_SET, "first_sentences": sentences, "metric": "BLEU", "value": result["bleu"],
            "signature": result["bleu_signature"], "device": "cpu", "precision": "fp32", "decode": config.to_dict(),
            "command": f"seq2seq-eval --model {model} --data {data} --limit {sentences} --device cpu --precision fp32"}


def card_entries(name: str, r: dict) -> list[dict]:
    out = [{"test_set": name, "metric": "BLEU", "value": round(r["bleu"], 2), "signature": r["bleu_signature"]},
           {"test_set": name, "metric": "chrF", "value": round(r["chrf"], 2), "signature": r["chrf_signature"]}]
    if "keywords" in r:
        out.append({"test_set": name, "metric": "key words (% of sentences)", "value": r["keywords"],
                    "signature": "keyword_hits, data/everyday/everyday.keywords"})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model directory (card.json is written there)")
    p.add_argument("--sets", default=",".join(TEST_SETS), help="comma-separated names from the list above")
    args = p.parse_args()
    rows = []
    for name in args.sets.split(","):
        with tempfile.NamedTemporaryFile("r", suffix=".en", encoding="utf-8") as hyps:
            command = [sys.executable, "-m", "seq2seq.evaluate", "--model", args.model, "--data", str(TEST_SETS[name]),
                       "--json", "--hyp-out", hyps.name]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            result = json.loads(out.splitlines()[-1])
            keywords = Path(f"{TEST_SETS[name]}.keywords")
            if keywords.is_file():
                hits = keyword_hits(hyps.read().splitlines(), keywords.read_text(encoding="utf-8").splitlines())
                result["keywords"] = round(100 * sum(hits) / len(hits), 1)
        rows.append((name, result))
        print(f"{name}: BLEU {result['bleu']:.2f} chrF {result['chrf']:.2f}", file=sys.stderr, flush=True)
    card = Path(args.model) / "card.json"
    meta = json.loads(card.read_text()) if card.is_file() else {}
    rerun = {name for name, _ in rows}  # the other sets' scores stay as they were
    meta["scores"] = [s for s in meta.get("scores", []) if s["test_set"] not in rerun]
    meta["scores"] += [s for name, r in rows for s in card_entries(name, r)]
    meta["checks"] = [bleu_check(args.model)]
    card.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    print("| test set | sentences | BLEU | chrF | key words |\n|---|---:|---:|---:|---:|")
    for name, r in rows:
        words = f"{r['keywords']:.1f}%" if "keywords" in r else ""
        print(f"| {name} | {r.get('sentences', '')} | {r['bleu']:.2f} | {r['chrf']:.2f} | {words} |")
    print(f"\nBLEU signature: `{rows[0][1]['bleu_signature']}`  \nchrF signature: `{rows[0][1]['chrf_signature']}`")


if __name__ == "__main__":
    main()
