"""Build the terminology test set (issue 25): the sentences of TICO-19 test and FLORES-200 devtest where a pair of our
dictionary (data/terms/dictionary.tsv) occurs on both sides: the French term in the French sentence (as the glossary
matches it: whole words, any case, NFKC) and its English term, as a whole word in any case, in the English reference.
Each sentence's glossary is those pairs, the protocol of Dinu et al. 2019 (terms from a dictionary, kept where the
reference uses them). The set holds text of those corpora, so it is written outside the repository.

    python scripts/make_term_testset.py --out ~/runs/terms/terms.jsonl   # then bench/glossary.py reads it
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "client"))
from seq2seq_api.glossary import matches, normalize, parse_tsv  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SETS = {"tico19/test": DATA / "tico19" / "test", "flores200/devtest": DATA / "flores200" / "devtest"}


def read_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def in_reference(term: str, reference: str) -> bool:
    words = r"\s+".join(re.escape(w) for w in normalize(term).split())
    return re.search(r"(?<!\w)" + words + r"(?!\w)", normalize(reference)) is not None


def build(dictionary: Path, sets: dict[str, Path]) -> list[dict]:
    terms = parse_tsv(dictionary.read_text(encoding="utf-8"), where=str(dictionary))
    out = []
    for name, prefix in sets.items():
        french, english = read_lines(prefix.with_suffix(".fr.gz")), read_lines(prefix.with_suffix(".en.gz"))
        for line, (fr, en) in enumerate(zip(french, english), 1):
            glossary = [list(pair) for pair in matches(terms, fr) if in_reference(pair[1], en)]
            if glossary:
                out.append({"set": name, "line": line, "fr": fr, "en": en, "glossary": glossary})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dictionary", type=Path, default=ROOT / "data" / "terms" / "dictionary.tsv")
    p.add_argument("--out", type=Path, default=Path.home() / "runs" / "terms" / "terms.jsonl")
    args = p.parse_args(argv)
    rows = build(args.dictionary, SETS)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    by_set = {name: sum(r["set"] == name for r in rows) for name in SETS}
    terms = sum(len(r["glossary"]) for r in rows)
    print(json.dumps({"sentences": len(rows), "by_set": by_set, "term_pairs": terms,
                      "distinct_terms": len({tuple(t) for r in rows for t in r["glossary"]}), "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
