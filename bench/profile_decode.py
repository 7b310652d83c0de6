"""Where a decoding step's time goes: torch.profiler over `Translator.translate` on the first N test sentences,
the ops ranked by their own CPU time, plus the share of the step spent in each part of the model.

    python bench/profile_decode.py --precision int8 --limit 320

Run it on a quiet machine; the shares, not the seconds, are what it is for.
"""
from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seq2seq.checkpoint import default_model  # noqa: E402
from seq2seq.config import DecodeConfig  # noqa: E402
from seq2seq.translator import Translator  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=default_model())
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/multi30k/test_2016_flickr.fr.gz"))
    p.add_argument("--precision", default="int8")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--limit", type=int, default=320)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=30, help="ops to list")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with gzip.open(args.data, "rt", encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()][:args.limit]
    t = Translator.from_checkpoint(args.model, precision=args.precision)
    config = DecodeConfig(beam_size=args.beam_size)
    t.translate(lines[:64], config)  # warm-up: kernels, caches
    tic = time.perf_counter()
    t.translate(lines, config)
    plain = time.perf_counter() - tic
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("translate"):
            t.translate(lines, config)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
    print(f"{len(lines)} sentences, {args.precision}, beam {args.beam_size}: {plain:.2f} s without the profiler")
    print(table)


if __name__ == "__main__":
    main()
