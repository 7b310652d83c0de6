"""Greedy agreement between ours, transformers (on our Marian export) and CTranslate2 (float32, on our
CTranslate2 export): the share of sentences where the outputs are identical strings. The three systems are the
ones bench/decode.py races, run with beam size 1.

    python bench/agreement.py --model runs/multi30k-v2/best.pt
"""
import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from decode import ct2, hf, ours  # noqa: E402  (bench/decode.py: this script's folder is on sys.path)
from seq2seq.checkpoint import load_model  # noqa: E402
from seq2seq.data import read_corpus  # noqa: E402
from seq2seq.export import export_ctranslate2, export_marian  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/multi30k/test_2016_flickr"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    sources = list(read_corpus(args.data)["src"])
    groups = [sources[i:i + args.batch_size] for i in range(0, len(sources), args.batch_size)]
    model, tok = load_model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="agreement-"))
    export_marian(model, tok, tmp / "marian")
    export_ctranslate2(model, tok, tmp / "ct2")
    systems = {"ours": ours(args.model, "fp32", 1), "transformers": hf(tmp / "marian", 1),
               "CTranslate2": ct2(tmp / "ct2", "float32", 1, args.threads, tok.sp)}
    outputs = {name: [h for g in groups for h in run(g)[0]] for name, run in systems.items()}
    same = lambda a, b: sum(x == y for x, y in zip(outputs[a], outputs[b]))  # noqa: E731
    print(f"greedy agreement on {len(sources)} sentences: ours = CTranslate2 {same('ours', 'CTranslate2')}, "
          f"ours = transformers {same('ours', 'transformers')}, "
          f"transformers = CTranslate2 {same('transformers', 'CTranslate2')}")


if __name__ == "__main__":
    main()
