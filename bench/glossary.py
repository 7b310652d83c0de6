"""The glossary on the terminology test set (scripts/make_term_testset.py): term use and BLEU without and with each
sentence's glossary, and sentences/s of both in the same run (issue 25).

Every sentence is its own request (its own glossary), all submitted at once to one Translator's running batch, as a
server decodes them: the unconstrained run is the same sentences, submitted the same way, without the glossary.

    python bench/glossary.py --terms ~/runs/terms/terms.jsonl --limit 400
Term use: the share of (sentence, term) pairs whose English term is in the output as a whole word, any case.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from seq2seq.checkpoint import default_model  # noqa: E402
from seq2seq.config import DecodeConfig  # noqa: E402
from seq2seq.evaluate import score  # noqa: E402
from seq2seq.translator import Translator  # noqa: E402
from seq2seq_api.glossary import normalize  # noqa: E402


def uses(term: str, text: str) -> bool:
    words = r"\s+".join(re.escape(w) for w in normalize(term).split())
    return re.search(r"(?<!\w)" + words + r"(?!\w)", normalize(text)) is not None


def run(translator: Translator, rows: list[dict], glossary: bool, base: DecodeConfig) -> tuple[list[str], float]:
    """Translations of every row (each its own job) and the wall-clock seconds they took together."""
    tic = time.perf_counter()
    jobs = [translator.submit([r["fr"]], base.replace(glossary=r["glossary"] if glossary else ()))
            for r in rows]
    out = [next(job.results())[1].text for job in jobs]
    return out, time.perf_counter() - tic


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--terms", type=Path, default=Path.home() / "runs" / "terms" / "terms.jsonl")
    p.add_argument("--model", default=default_model())
    p.add_argument("--precision", default="auto")
    p.add_argument("--limit", type=int, default=0, help="a seeded sample of this many sentences; 0 = all")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--json", type=Path, help="write the results here too")
    args = p.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in args.terms.read_text(encoding="utf-8").splitlines()]
    if args.limit and args.limit < len(rows):
        rows = random.Random(1).sample(rows, args.limit)
    translator = Translator.from_checkpoint(args.model, precision=args.precision, max_input_tokens=512).start()
    base = DecodeConfig(beam_size=args.beam_size)
    try:
        run(translator, rows[:16], True, base)  # warm-up: kernels for the shapes of both kinds
        plain, plain_s = run(translator, rows, False, base)
        constrained, constrained_s = run(translator, rows, True, base)
    finally:
        translator.stop()
    pairs = [(r, t) for r in rows for t in r["glossary"]]
    refs = [r["en"] for r in rows]
    result = {
        "sentences": len(rows), "terms": len(pairs), "precision": translator.precision, "beam_size": args.beam_size,
        "term_use_without": sum(uses(en, plain[rows.index(r)]) for r, (_, en) in pairs) / len(pairs),
        "term_use_with": sum(uses(en, constrained[rows.index(r)]) for r, (_, en) in pairs) / len(pairs),
        "exact_with": sum(en in constrained[rows.index(r)] for r, (_, en) in pairs) / len(pairs),
        "bleu_without": score(plain, refs), "bleu_with": score(constrained, refs),
        "sentences_per_s_without": len(rows) / plain_s, "sentences_per_s_with": len(rows) / constrained_s,
    }
    result["speed_ratio"] = result["sentences_per_s_with"] / result["sentences_per_s_without"]
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
