"""`seq2seq-backtranslate`: monolingual text in the model's source language -> a synthetic parallel corpus
(back-translation, Sennrich et al. 2016). For our fr→en models: English captions, an en→fr model, synthetic French.

    seq2seq-backtranslate --model ~/runs/en-fr/averaged.pt --input ../shared/data/multi30k/train_captions.en.gz \
        --out ~/runs/bt/train_captions --precision bf16

writes OUT.fr.gz (the model's output) and OUT.en.gz (the input lines), aligned, which `data.train` reads as
`{path: OUT, synthetic: true}`. Resumable: chunks of --chunk-lines input lines are appended to OUT.{fr,en}.part and
OUT.state.json records the chunks done and the options; the same command continues after a kill and refuses other
options. Over several processes, `torchrun --nproc-per-node N -m seq2seq.backtranslate ...` (seq2seq.shards): the
same files, each rank writing its chunks apart and rank 0 joining them. It knows files and the Translator, not
tensors.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import shards
from .checkpoint import CheckpointError
from .config import PRECISIONS, ConfigError, DecodeConfig
from .options import ArgumentParser, add_decode_flags, decode_options_from_args
from .shards import Output, read_lines, sha256  # noqa: F401 (read_lines: bench/train_layout.py imports it here)
from .tokenizer import Tokenizer
from .translator import InputError, Translator

log = logging.getLogger("seq2seq.backtranslate")
SAMPLING = ("temperature", "top_k", "top_p", "num_samples")  # DecodeConfig fields that need --sample
COUNTS = ("lines", "pairs", "empty", "too_long", "empty_output")  # input lines read, pairs written, lines skipped


class BacktranslateError(ValueError):
    """A bad input file, output or resume; the message is one line that says which and why."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="seq2seq-backtranslate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="checkpoint file or model directory (e.g. an en→fr averaged.pt)")
    p.add_argument("--input", required=True, help="monolingual text in the model's source language, .gz or plain")
    p.add_argument("--out", required=True, help="output prefix: OUT.<tgt>.gz (synthetic) + OUT.<src>.gz (input)")
    p.add_argument("--src-lang", help="the model's source language (default: from the checkpoint's data config)")
    p.add_argument("--tgt-lang", help="the model's target language (default: from the checkpoint's data config)")
    # DecodeConfig's flags: beam search (default beam 4, the paper's §6.1) or --sample (Edunov et al. 2018, e.g.
    # --sample --top-k 10). --seed seeds chunk k's draws with (seed, k); unset = 1.
    add_decode_flags(p, defaults=False)
    r = p.add_argument_group("run")
    r.add_argument("--chunk-lines", type=int, default=1000, help="input lines per chunk (the unit of resuming)")
    r.add_argument("--limit", type=int, default=None, help="stop after the first N input lines (a later run can go on)")
    r.add_argument("--max-input-tokens", type=int, default=256, help="skip longer input lines (subword tokens + </s>)")
    r.add_argument("--precision", default="fp32", choices=[p for p in PRECISIONS if p != "auto"],
                   help="int8 (x86) and bf16 (AVX512-BF16/AMX) are faster than fp32 on CPU, at the same BLEU")
    r.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda[:N]")
    args = p.parse_args(argv)
    for name in ("chunk_lines", "limit", "max_input_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.limit and shards.world_size() > 1:
        p.error("--limit needs one process: under torchrun the ranks translate the whole input")
    if args.seed is None:
        args.seed = 1
    return args


def decode_config(args: argparse.Namespace) -> DecodeConfig:
    """The search the flags ask for; sampling flags without --sample (or a beam with it) are an error. Only the best
    output of each line is written, so n_best is 1 whatever the flags say."""
    given = {k: v for k, v in decode_options_from_args(args).items() if k not in ("seed", "sample", "n_best")}
    sampling = {k: given.pop(k) for k in SAMPLING if k in given}
    if args.sample:
        if "beam_size" in given:
            raise ConfigError("--beam-size and --sample exclude each other")
        # seed None: chunks draw from torch's global generator, seeded per chunk in `translate_chunk`
        return DecodeConfig(sample=True, seed=None, **sampling, **given)
    if sampling:
        raise ConfigError(f"{', '.join('--' + k.replace('_', '-') for k in sampling)} need(s) --sample")
    return DecodeConfig(**{"beam_size": 4, **given})


# ---- translating -----------------------------------------------------------------------------------------------------

def chunk_seed(seed: int, chunk: int) -> int:
    return seed * 1_000_003 + chunk


def translate_chunk(translator: Translator, tokenizer: Tokenizer, lines: list[str], config: DecodeConfig,
                    chunk: int, args: argparse.Namespace, counts: dict[str, int]) -> list[tuple[str, str]]:
    """Input lines -> (synthetic, input) pairs; empty and over-long lines and empty outputs are skipped (counted)."""
    keep = []
    for line in lines:
        if not line.strip():
            counts["empty"] += 1
        elif len(tokenizer.encode(line)) + 1 > args.max_input_tokens:
            counts["too_long"] += 1
        else:
            keep.append(line)
    if config.sample:
        # Deviation from DecodeConfig.seed: a seeded config gives every sentence of a call the same random numbers
        # (one generator per sentence, all seeded alike), which would correlate the samples of a whole corpus. The
        # global generator, seeded per chunk, gives each sentence its own draws and is reproducible chunk by chunk.
        torch.manual_seed(chunk_seed(args.seed, chunk))
    pairs = []
    for line, t in zip(keep, translator.translate(keep, config) if keep else []):
        if t.text.strip():
            pairs.append((t.text, line))
        else:
            counts["empty_output"] += 1
    counts["lines"] += len(lines)
    counts["pairs"] += len(pairs)
    return pairs


def languages(payload: dict, args: argparse.Namespace) -> tuple[str, str]:
    """(source, target) language of the model: the checkpoint's data config, or the flags; they must agree."""
    data = payload["configs"].get("data") or {}
    langs = []
    for flag, key in ((args.src_lang, "src_lang"), (args.tgt_lang, "tgt_lang")):
        saved = data.get(key)
        if flag and saved and flag != saved:
            raise BacktranslateError(f"--{key.replace('_', '-')} {flag} but the model was trained with {key} {saved}")
        if not (flag or saved):
            raise BacktranslateError(f"{args.model} does not record its languages (a model directory): "
                                     "give --src-lang and --tgt-lang")
        langs.append(flag or saved)
    return langs[0], langs[1]


def run(args: argparse.Namespace) -> dict[str, int]:
    """Steps 1–4: check the inputs, open (or resume) this process's output, translate its chunks, write the .gz.
    Under torchrun each rank does this for its chunks, into a part of its own, and rank 0 then joins the parts."""
    shard = shards.start()
    # 1. The inputs and the options a resumed run must share (not --limit or --device: where and how far, not what).
    config = decode_config(args)
    source = Path(args.input)
    if not source.is_file():
        raise BacktranslateError(f"input not found: {source}")
    payload = ckpt.load(args.model)
    src_lang, tgt_lang = languages(payload, args)
    weights = Path(args.model) / ckpt.WEIGHTS if Path(args.model).is_dir() else Path(args.model)
    options = {"input_sha256": sha256(source), "model_sha256": sha256(weights), "src_lang": src_lang,
               "tgt_lang": tgt_lang, "search": {k: v for k, v in config.to_dict().items() if k != "seed"},
               "seed": args.seed if config.sample else None, "chunk_lines": args.chunk_lines,
               "max_input_tokens": args.max_input_tokens, "precision": args.precision}
    # 2. The output, resumed where its state says.
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    final = Output(args.out, {lang: Path(f"{args.out}.{lang}.gz") for lang in (tgt_lang, src_lang)}, options, COUNTS)
    if final.complete:
        log.info("%s.{%s,%s}.gz are complete: nothing to do", args.out, tgt_lang, src_lang)
        return final.state["counts"]
    out = shards.share(final, shard)
    total = sum(1 for _ in read_lines(source))
    end = min(total, args.limit or total)
    if not out.complete:  # a rank whose part is done goes straight to the join
        translator = Translator.from_checkpoint(args.model, device=args.device, precision=args.precision,
                                                max_input_tokens=args.max_input_tokens)
        tokenizer = Tokenizer(payload["tokenizer"])
        out.open()
        counts = dict(out.state["counts"])
        if out.state["chunks_done"]:
            log.info("resuming after %d chunks (%d input lines, %d pairs)", out.state["chunks_done"],
                     counts["lines"], counts["pairs"])
        # 3. Chunk k is input lines [k·n, (k+1)·n): the same chunks in every run, so a resumed run writes what an
        #    uninterrupted one would.
        shards.translate_share(out, read_lines(source), args.chunk_lines, total, end, shard, counts,
                               lambda k, chunk: translate_chunk(translator, tokenizer, chunk, config, k, args, counts))
        # 4. The .gz files, written from the part files (under torchrun: rank 0, from every rank's part).
        out.finish(counts, input_exhausted=end == total)
    shards.gather(final, shard)
    counts = (final if shard.rank == 0 else out).state["counts"]
    log.info("%s.%s.gz + %s.%s.gz: %d pairs from %d of %d input lines (skipped: %d empty, %d too long, %d with an "
             "empty translation)%s", args.out, tgt_lang, args.out, src_lang, counts["pairs"], counts["lines"], total,
             counts["empty"], counts["too_long"], counts["empty_output"],
             f"; rank {shard.rank}'s part" if shard.rank else "")
    return counts


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        run(args)
    except (BacktranslateError, ConfigError, CheckpointError, InputError, ValueError, OSError, EOFError) as e:
        print(f"seq2seq-backtranslate: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seq2seq-backtranslate: interrupted; the same command continues from the last whole chunk",
              file=sys.stderr)
        return 130
    finally:
        shards.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
