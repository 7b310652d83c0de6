"""Evaluation (`seq2seq-eval`): translate a test set, score the detokenized output against the raw references
with sacrebleu (BLEU and chrF, with their signatures). Also the dev loss and dev BLEU that training reports.
"""
from __future__ import annotations

import json
import logging
import math
import re
import sys
from pathlib import Path

import sacrebleu
import torch

from .checkpoint import CheckpointError
from .config import ConfigError, DecodeConfig
from .data import DataError, read_corpus, sequential_batches
from .loss import label_smoothed_loss
from .options import ArgumentParser, add_decode_flags, add_model_flags, decode_config_from_args
from .translator import InputError

log = logging.getLogger("seq2seq.eval")


def score(hypotheses: list[str], references: list[str]) -> dict:
    """sacrebleu BLEU (13a tokenization, default) and chrF on detokenized text, with signatures."""
    bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
    b, c = bleu.corpus_score(hypotheses, [references]), chrf.corpus_score(hypotheses, [references])
    return {"bleu": round(b.score, 2), "chrf": round(c.score, 2), "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature()), "bleu_detail": str(b), "sentences": len(hypotheses)}


def keyword_hits(hypotheses: list[str], keywords: list[str]) -> list[bool]:
    """The key-word check of data/everyday: a line's groups (`;`-separated) must each have one of their alternatives
    (`/`-separated) in the hypothesis, case-insensitive, as whole words, which from four letters on may take an English
    ending ("rain" takes "raining"; "hi" is only "hi"); an alternative ending in `*` is a prefix ("leav*" takes
    "leave" and "leaving")."""
    def pattern(alt: str) -> str:
        alt = alt.strip().lower()
        if alt.endswith("*"):
            return r"\b" + re.escape(alt[:-1])
        return r"\b" + re.escape(alt) + (r"(?:s|es|ed|ing|y|ly)?" if len(alt) >= 4 else "") + r"\b"

    def hit(hyp: str, groups: str) -> bool:
        return all(any(re.search(pattern(alt), hyp.lower()) for alt in group.split("/")) for group in groups.split(";"))
    return [hit(h, k) for h, k in zip(hypotheses, keywords, strict=True)]


@torch.no_grad()
def dev_loss(model, ds, max_tokens: int, pad_id: int, epsilon: float, device: torch.device) -> dict:
    """Per-token label-smoothed loss and NLL (and perplexity) of a tokenized dev set, teacher-forced."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)
    for _, batch in sequential_batches(ds, max_tokens, pad_id):
        b = batch.to(device)
        logits = model(b.src_ids, b.tgt_in_ids)
        loss, nll, n = label_smoothed_loss(logits.flatten(0, 1), b.tgt_out_ids.flatten(), epsilon, pad_id)
        totals += torch.tensor([loss.item(), nll.item(), n.item()], dtype=torch.float64)
    loss, nll = (totals[:2] / totals[2]).tolist()
    return {"dev_loss": loss, "dev_nll": nll, "dev_ppl": math.exp(min(nll, 50))}


def dev_bleu(model, tokenizer, sources: list[str], references: list[str], device: torch.device) -> dict:
    """Greedy-decoded BLEU and chrF on dev sentences (fast; the final numbers use beam search)."""
    from .translator import Translator

    translator = Translator(model, tokenizer, device=str(device), max_input_tokens=10_000)
    keep = [i for i, s in enumerate(sources) if s.strip()]
    hyps = [t.text for t in translator.translate([sources[i] for i in keep], DecodeConfig(beam_size=1))]
    result = score(hyps, [references[i] for i in keep])
    return {"dev_bleu": result["bleu"], "dev_chrf": result["chrf"]}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    p = ArgumentParser(prog="seq2seq-eval", description=__doc__.split("\n")[0])
    add_model_flags(p)
    p.add_argument("--data", help="test corpus: dir/name prefix (name.fr[.gz] + name.en[.gz]), .tsv, .jsonl or hf:ID")
    p.add_argument("--src", help="source file (one sentence per line); with --ref, instead of --data")
    p.add_argument("--ref", help="reference file, aligned with --src")
    p.add_argument("--limit", type=int, default=0, help="only the first N pairs (0 = all)")
    p.add_argument("--hyp-out", help="write the hypotheses here, one per line")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_decode_flags(p)
    args = p.parse_args(argv)
    try:
        from .translate import translate_lines
        from .translator import Translator
        translator = Translator.from_checkpoint(args.model, device=args.device, precision=args.precision,
                                                max_input_tokens=100_000)  # first: a missing model is said first
        if bool(args.data) == bool(args.src and args.ref):
            raise ConfigError("give either --data or both --src and --ref")
        config = decode_config_from_args(args)
        if args.data:
            ds = read_corpus(args.data)
            sources, references = ds["src"], ds["tgt"]
        else:
            sources = Path(args.src).read_text(encoding="utf-8").splitlines()
            references = Path(args.ref).read_text(encoding="utf-8").splitlines()
            if len(sources) != len(references):
                raise DataError(f"{args.src} has {len(sources)} lines but {args.ref} has {len(references)}")
        if args.limit:
            sources, references = sources[:args.limit], references[:args.limit]
        hyps = translate_lines(translator, list(sources), config, use_json=False)  # empty source: empty hypothesis
    except (ConfigError, CheckpointError, DataError, InputError, OSError) as e:
        print(f"seq2seq-eval: error: {e}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:
        print(f"seq2seq-eval: error: a file is not UTF-8 text ({e.reason} at byte {e.start})", file=sys.stderr)
        return 2
    if args.hyp_out:
        Path(args.hyp_out).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    result = score(hyps, list(references))
    result.update(model=args.model, test=args.data or args.src, decode=config.to_dict())
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['bleu_detail']}\n  signature: {result['bleu_signature']}\n"
              f"chrF2 = {result['chrf']:.2f}\n  signature: {result['chrf_signature']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
