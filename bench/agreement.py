"""Greedy agreement between ours, transformers (on our Marian export) and CTranslate2 (float32, on our
CTranslate2 export): the share of sentences where the outputs are identical strings.

    python bench/agreement.py --model runs/multi30k-v2/best.pt
"""
import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from seq2seq.checkpoint import load_model  # noqa: E402
from seq2seq.config import DecodeConfig  # noqa: E402
from seq2seq.data import read_corpus  # noqa: E402
from seq2seq.export import export_ctranslate2, export_marian  # noqa: E402
from seq2seq.translator import Translator  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/multi30k/test_2016_flickr"))
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    import ctranslate2
    import transformers

    sources = list(read_corpus(args.data)["src"])
    model, tok = load_model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="agreement-"))
    export_marian(model, tok, tmp / "marian")
    export_ctranslate2(model, tok, tmp / "ct2")
    ours = [t.text for t in Translator(model, tok, device="cpu").translate(sources, DecodeConfig(beam_size=1))]
    ct2 = ctranslate2.Translator(str(tmp / "ct2"), device="cpu", compute_type="float32")
    results = ct2.translate_batch([tok.sp.encode(s, out_type=str) + ["</s>"] for s in sources], beam_size=1,
                                  max_batch_size=args.batch_size, max_decoding_length=256)
    theirs_ct2 = [tok.sp.decode_pieces(r.hypotheses[0]) for r in results]
    hf = transformers.MarianMTModel.from_pretrained(tmp / "marian").eval()
    hf_tok = transformers.MarianTokenizer.from_pretrained(tmp / "marian")
    theirs_hf = []
    with torch.inference_mode():
        for i in range(0, len(sources), args.batch_size):
            enc = hf_tok(sources[i:i + args.batch_size], return_tensors="pt", padding=True)
            out = hf.generate(**enc, num_beams=1, do_sample=False, max_length=None,
                              max_new_tokens=enc.input_ids.size(1) + 50)
            theirs_hf += hf_tok.batch_decode(out, skip_special_tokens=True)
    n = len(sources)
    same = lambda a, b: sum(x == y for x, y in zip(a, b))  # noqa: E731
    print(f"greedy agreement on {n} sentences: ours = CTranslate2 {same(ours, theirs_ct2)}, "
          f"ours = transformers {same(ours, theirs_hf)}, transformers = CTranslate2 {same(theirs_hf, theirs_ct2)}")


if __name__ == "__main__":
    main()
