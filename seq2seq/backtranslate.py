"""`seq2seq-backtranslate`: monolingual text in the model's source language -> a synthetic parallel corpus
(back-translation, Sennrich et al. 2016). For our fr→en models: English captions, an en→fr model, synthetic French.

    seq2seq-backtranslate --model ~/runs/en-fr/averaged.pt --input ../shared/data/multi30k/train_captions.en.gz \
        --out ~/runs/bt/train_captions --precision bf16

writes OUT.fr.gz (the model's output) and OUT.en.gz (the input lines), aligned, which `data.train` reads as
`{path: OUT, synthetic: true}`. Resumable: chunks of --chunk-lines input lines are appended to OUT.{fr,en}.part and
OUT.state.json records the chunks done and the options; the same command continues after a kill and refuses other
options. It knows files and the Translator, not tensors.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint as ckpt
from .checkpoint import CheckpointError
from .config import PRECISIONS, ConfigError, DecodeConfig
from .options import ArgumentParser, add_decode_flags, decode_options_from_args
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


# ---- files -----------------------------------------------------------------------------------------------------------

def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_lines(path: Path, start: int = 0) -> Iterator[str]:
    """The lines of a plain or gzipped UTF-8 file from line `start` on, without their "\\n"."""
    with _open_text(path) as f:
        for n, line in enumerate(f):
            if n >= start:
                yield line.rstrip("\n")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_gzip(part: Path, out: Path) -> None:
    """part (plain text) -> out.gz, atomically; no name and mtime 0 in the header, so equal text gives equal bytes."""
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    with open(part, "rb") as src, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        shutil.copyfileobj(src, gz)
    os.replace(tmp, out)


# ---- the corpus being written ----------------------------------------------------------------------------------------

class Output:
    """OUT.{lang}.part files (appended a chunk at a time) and OUT.state.json (what is committed, written atomically
    after each whole chunk). A resumed run truncates the part files to the committed sizes, so a chunk half-written
    by a killed run, or a chunk cut short by --limit, is done again whole."""

    def __init__(self, prefix: str, langs: tuple[str, str], options: dict):
        self.prefix, self.langs, self.options = prefix, langs, options  # langs = (synthetic side, input side)
        self.state_path = Path(f"{prefix}.state.json")
        self.parts = {lang: Path(f"{prefix}.{lang}.part") for lang in langs}
        self.finals = {lang: Path(f"{prefix}.{lang}.gz") for lang in langs}
        self.state = {"options": options, "chunks_done": 0, "bytes": {lang: 0 for lang in langs},
                      "counts": dict.fromkeys(COUNTS, 0), "written": dict.fromkeys(COUNTS, 0), "complete": False}
        if self.state_path.is_file():
            self._load()
        elif any(p.exists() for p in self.finals.values()):
            raise BacktranslateError(f"{prefix}.*.gz exist(s) but {self.state_path} does not: not overwriting; "
                                     "choose another --out")

    def _load(self) -> None:
        try:
            saved = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BacktranslateError(f"unreadable {self.state_path}: {e}; delete it to start over") from None
        if saved.get("options") != self.options:
            keys = sorted(k for k in {*self.options, *saved.get("options", {})}
                          if saved.get("options", {}).get(k) != self.options.get(k))
            raise BacktranslateError(f"{self.state_path} was made with other options (differing: {', '.join(keys)}): "
                                     "rerun with the same ones, or choose another --out")
        self.state = saved

    @property
    def complete(self) -> bool:
        return self.state["complete"] and all(p.is_file() for p in self.finals.values())

    def open(self) -> None:
        """Part files at the committed sizes, open for appending."""
        if self.state["complete"]:
            raise BacktranslateError(f"{self.state_path} says complete but {self.prefix}.*.gz are missing: delete "
                                     "the state file to start over")
        self.files = {}
        for lang, path in self.parts.items():
            size = self.state["bytes"][lang]
            if path.exists() and path.stat().st_size < size or not path.exists() and size:
                raise BacktranslateError(f"{path} is shorter than {self.state_path} says: delete both to start over")
            f = self.files[lang] = open(path, "r+b" if path.exists() else "w+b")
            f.truncate(size)
            f.seek(size)
        self._save()  # from now on the state file explains the output files

    def _save(self) -> None:
        write_atomic(self.state_path, json.dumps(self.state, indent=1) + "\n")

    def append(self, pairs: list[tuple[str, str]]) -> None:
        for side, lang in enumerate(self.langs):
            self.files[lang].write("".join(p[side] + "\n" for p in pairs).encode("utf-8"))
            self.files[lang].flush()
            os.fsync(self.files[lang].fileno())

    def commit(self, chunk: int, counts: dict[str, int]) -> None:
        self.state.update(chunks_done=chunk + 1, counts=dict(counts),
                          bytes={lang: f.tell() for lang, f in self.files.items()})
        self._save()

    def finish(self, counts: dict[str, int], input_exhausted: bool) -> None:
        """Write OUT.{lang}.gz from the part files and record what they hold (`written`: the committed chunks plus a
        chunk cut short by --limit); when the whole input is done, mark complete and drop the part files."""
        for f in self.files.values():
            f.close()
        for lang in self.langs:
            write_gzip(self.parts[lang], self.finals[lang])
        self.state.update(written=dict(counts), complete=input_exhausted)
        self._save()
        if input_exhausted:
            for path in self.parts.values():
                path.unlink()


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
    """Steps 1–4: check the inputs, open (or resume) the output, translate the remaining chunks, write the .gz."""
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
    out = Output(args.out, (tgt_lang, src_lang), options)
    if out.complete:
        log.info("%s.{%s,%s}.gz are complete: nothing to do", args.out, tgt_lang, src_lang)
        return out.state["counts"]
    out.open()
    translator = Translator.from_checkpoint(args.model, device=args.device, precision=args.precision,
                                            max_input_tokens=args.max_input_tokens)
    tokenizer = Tokenizer(payload["tokenizer"])
    total = sum(1 for _ in read_lines(source))
    end = min(total, args.limit or total)
    n, first = args.chunk_lines, out.state["chunks_done"]
    counts = dict(out.state["counts"])
    if first:
        log.info("resuming after %d chunks (%d input lines, %d pairs)", first, counts["lines"], counts["pairs"])
    # 3. Chunk k is input lines [k·n, (k+1)·n): the same chunks in every run, so a resumed run writes what an
    #    uninterrupted one would. A chunk cut short by --limit is written but not committed.
    lines = read_lines(source, first * n)
    with tqdm(total=end, initial=min(first * n, end), unit="line", dynamic_ncols=True, disable=None) as bar:
        for k in range(first, (end + n - 1) // n):  # the chunks that hold lines [first·n, end)
            chunk = [next(lines) for _ in range(min(n, end - k * n))]
            out.append(translate_chunk(translator, tokenizer, chunk, config, k, args, counts))
            if len(chunk) == min(n, total - k * n):
                out.commit(k, counts)
            bar.update(len(chunk))
    # 4. The .gz files, written from the part files.
    out.finish(counts, input_exhausted=end == total)
    log.info("%s.%s.gz + %s.%s.gz: %d pairs from %d of %d input lines (skipped: %d empty, %d too long, %d with an "
             "empty translation)", args.out, tgt_lang, args.out, src_lang, counts["pairs"], counts["lines"], total,
             counts["empty"], counts["too_long"], counts["empty_output"])
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
