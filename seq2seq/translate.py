"""`seq2seq-translate`: French lines -> English lines, in order, one per input line; stdin to stdout, or a file to a
file in resumable chunks, also over many processes (seq2seq.shards):

    seq2seq-translate < fr.txt > en.txt
    seq2seq-translate --input fr.txt.gz --output en.txt          # OUTPUT.state.json: rerun to continue after a kill
    torchrun --nproc-per-node 2 -m seq2seq.translate --input fr.txt.gz --output en.txt     # the same en.txt

An empty input line gives an empty output line. `--json` prints one JSON object per line instead (text, score,
tokens, per-token log-probs, and the n-best alternatives).
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

from . import checkpoint as ckpt
from . import shards
from .checkpoint import CheckpointError
from .config import ConfigError
from .options import ArgumentParser, add_decode_flags, add_model_flags, decode_config_from_args
from .shards import Output, OutputError, read_lines, sha256
from .translator import InputError, Translation, Translator


def as_json(t: Translation) -> dict:
    return {"text": t.text, "score": t.score, "tokens": list(t.tokens), "token_log_probs": list(t.token_log_probs),
            "alternatives": [as_json(a) for a in t.alternatives]}


def translate_lines(translator: Translator, lines: list[str], config, use_json: bool) -> list[str]:
    keep = [i for i, line in enumerate(lines) if line.strip()]
    out = [json.dumps({"text": ""}) if use_json else ""] * len(lines)
    for i, t in zip(keep, translator.translate([lines[i] for i in keep], config)):
        out[i] = json.dumps(as_json(t), ensure_ascii=False) if use_json else t.text
    return out


def stream(translator: Translator, args, config) -> None:
    """Lines of --input or stdin to stdout, a chunk at a time (the chunks of the file mode, so the same output)."""
    lines = read_lines(Path(args.input)) if args.input else (line.rstrip("\n") for line in sys.stdin)
    while chunk := list(itertools.islice(lines, args.chunk_lines)):
        for out in translate_lines(translator, chunk, config, args.json):
            print(out)
        sys.stdout.flush()


def translate_file(translator: Translator, args, config, shard: shards.Shard) -> None:
    """--input to --output in chunks of --chunk-lines; this rank's chunks under torchrun, then rank 0 joins."""
    source = Path(args.input)
    weights = Path(args.model) / ckpt.WEIGHTS if Path(args.model).is_dir() else Path(args.model)
    options = {"input_sha256": sha256(source), "model_sha256": sha256(weights), "search": config.to_dict(),
               "precision": translator.precision, "chunk_lines": args.chunk_lines, "json": args.json}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    final = Output(args.output, {"out": Path(args.output)}, options, ("lines",))
    if final.complete:
        print(f"seq2seq-translate: {args.output} is complete: nothing to do", file=sys.stderr)
        return
    out = shards.share(final, shard)
    total = sum(1 for _ in read_lines(source))
    if not out.complete:  # a rank whose part is done goes straight to the join
        out.open()
        counts = dict(out.state["counts"])
        if out.state["chunks_done"]:
            print(f"seq2seq-translate: resuming {out.prefix} after {out.state['chunks_done']} chunks", file=sys.stderr)

        def translate(k: int, chunk: list[str]) -> list[tuple[str]]:
            counts["lines"] += len(chunk)
            return [(line,) for line in translate_lines(translator, chunk, config, args.json)]

        shards.translate_share(out, read_lines(source), args.chunk_lines, total, total, shard, counts, translate)
        out.finish(counts, input_exhausted=True)
    shards.gather(final, shard)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="seq2seq-translate", description=__doc__.split("\n")[0])
    add_model_flags(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--chunk-lines", type=int, default=2048, help="lines read and translated at a time")
    p.add_argument("--input", help="read this file (plain or .gz) instead of stdin")
    p.add_argument("--output", help="write this file (.gz: gzipped) instead of stdout, a chunk at a time with "
                                    "OUTPUT.state.json: the same command continues after a kill; needs --input; "
                                    "how to run under torchrun")
    add_decode_flags(p)
    args = p.parse_args(argv)
    if args.chunk_lines < 1:
        p.error(f"--chunk-lines must be >= 1, got {args.chunk_lines}")
    if args.output and not args.input:
        p.error("--output needs --input: resuming and sharding read the input again")
    if shards.world_size() > 1 and not args.output:
        p.error("under torchrun, give --input and --output (the ranks write parts that rank 0 joins)")
    try:
        config = decode_config_from_args(args)
        shard = shards.start()
        if args.input and not Path(args.input).is_file():
            raise ConfigError(f"input not found: {args.input}")
        translator = Translator.from_checkpoint(args.model, device=args.device, precision=args.precision)
        if args.output:
            translate_file(translator, args, config, shard)
        else:
            stream(translator, args, config)
    except (ConfigError, CheckpointError, InputError, OutputError, OSError) as e:
        print(f"seq2seq-translate: error: {e}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:
        print(f"seq2seq-translate: error: the input is not UTF-8 text ({e.reason} at byte {e.start})", file=sys.stderr)
        return 2
    finally:
        shards.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
