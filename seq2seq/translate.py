"""`seq2seq-translate`: French lines on stdin -> English lines on stdout, in order, one per input line.

An empty input line gives an empty output line. `--json` prints one JSON object per line instead (text, score,
tokens, per-token log-probs, and the n-best alternatives).
"""
from __future__ import annotations

import itertools
import json
import sys

from .checkpoint import CheckpointError
from .config import ConfigError
from .options import ArgumentParser, add_decode_flags, add_model_flags, decode_config_from_args
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


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="seq2seq-translate", description=__doc__.split("\n")[0])
    add_model_flags(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--chunk-lines", type=int, default=2048, help="lines read and translated at a time")
    add_decode_flags(p)
    args = p.parse_args(argv)
    try:
        config = decode_config_from_args(args)
        translator = Translator.from_checkpoint(args.model, device=args.device, precision=args.precision)
        lines = (line.rstrip("\n") for line in sys.stdin)
        while chunk := list(itertools.islice(lines, max(1, args.chunk_lines))):
            for out in translate_lines(translator, chunk, config, args.json):
                print(out)
            sys.stdout.flush()
    except (ConfigError, CheckpointError, InputError) as e:
        print(f"seq2seq-translate: error: {e}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:
        print(f"seq2seq-translate: error: the input is not UTF-8 text ({e.reason} at byte {e.start})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
