"""Carve a dev split out of a training corpus by target sentence (for Tatoeba, which has no dev set):

    python scripts/carve_dev.py --corpus ../shared/data/tatoeba/train --out runs/data/tatoeba --dev-size 2000

writes OUT_train.{fr,en}.gz and OUT_dev.{fr,en}.gz (gzipped, aligned), never inside the repository's tracked files.
"""
import argparse
import gzip
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from seq2seq.data import carve_dev, read_corpus  # noqa: E402


def write(prefix: str, src: list[str], tgt: list[str], idx: list[int]) -> None:
    for lang, side in (("fr", src), ("en", tgt)):
        with gzip.open(f"{prefix}.{lang}.gz", "wt", encoding="utf-8") as f:
            f.writelines(side[i] + "\n" for i in idx)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True, help="aligned prefix: CORPUS.fr[.gz] + CORPUS.en[.gz]")
    p.add_argument("--out", required=True, help="output prefix")
    p.add_argument("--dev-size", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    ds = read_corpus(args.corpus)
    src, tgt = list(ds["src"]), list(ds["tgt"])
    train, dev = carve_dev(src, tgt, args.dev_size, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write(f"{args.out}_train", src, tgt, train)
    write(f"{args.out}_dev", src, tgt, dev)
    print(f"{len(train)} train pairs, {len(dev)} dev pairs ({len(src) - len(train) - len(dev)} dropped)")


if __name__ == "__main__":
    main()
