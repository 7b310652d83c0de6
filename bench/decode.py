"""Decoding speed race on one set of weights: ours (fp32, bf16, int8) vs transformers `generate` on our Marian
export vs CTranslate2 (float32, int8) on the converted export.

Every system translates the same test set in the same groups of `--batch-size` consecutive sentences, with the
same beam size and threads, each in a fresh process of its own, in one run; rounds alternate the systems so
machine noise hits them alike. Two times per system: decode only (the test set, after loading and one warm-up
group) and the whole process (start, imports, loading, warm-up, decoding, as a user's command pays it), and the
process's peak RSS.
Prints target tokens/s, sentences/s, BLEU (sacrebleu) and the ratios to CTranslate2 int8.

    python bench/decode.py --model runs/multi30k/best.pt --beam-size 4 --batch-size 32
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seq2seq.config import DecodeConfig  # noqa: E402
from seq2seq.data import read_corpus  # noqa: E402
from seq2seq.checkpoint import default_model, load_model  # noqa: E402
from seq2seq.evaluate import score  # noqa: E402
from seq2seq.export import export_ctranslate2, export_marian  # noqa: E402
from seq2seq.translator import Translator  # noqa: E402


def ours(model_path: str, precision: str, beam: int, device: str = "cpu", max_batch_rows: int | None = None,
         max_cache_mb: float | None = None):
    model, tok = load_model(model_path)
    # The engine decodes at most max_batch_rows rows (beams) at once, 128 by default: a batch of 32 at beam 4. A
    # larger --batch-size only decodes more sentences at once with these raised too (a GPU's large batch).
    translator = Translator(model, tok, device=device, precision=precision).configure(max_batch_rows, max_cache_mb)
    config = DecodeConfig(beam_size=beam, length_penalty=0.6)

    def run(batch: list[str]) -> tuple[list[str], int]:
        out = translator.translate(batch, config)
        return [t.text for t in out], sum(len(t.tokens) for t in out)

    return run


def hf(export_dir: Path, beam: int):
    import transformers

    model = transformers.MarianMTModel.from_pretrained(export_dir).eval()
    tok = transformers.MarianTokenizer.from_pretrained(export_dir)

    def run(batch: list[str]) -> tuple[list[str], int]:
        enc = tok(batch, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**enc, num_beams=beam, do_sample=False, length_penalty=1.0, max_length=None,
                                 max_new_tokens=int(enc.input_ids.size(1)) + 50)
        n = int(out[:, 1:].ne(model.config.pad_token_id).sum())  # generated tokens incl. eos, without the start
        return tok.batch_decode(out, skip_special_tokens=True), n

    return run


def ct2(ct2_dir: Path, compute_type: str, beam: int, threads: int, sp):
    import ctranslate2

    translator = ctranslate2.Translator(str(ct2_dir), device="cpu", compute_type=compute_type,
                                        intra_threads=threads, inter_threads=1)

    def run(batch: list[str]) -> tuple[list[str], int]:
        src = [sp.encode(s, out_type=str) + ["</s>"] for s in batch]
        res = translator.translate_batch(src, beam_size=beam, length_penalty=0.6, max_batch_size=len(batch),
                                         max_decoding_length=max(map(len, src)) + 50)
        hyps = [r.hypotheses[0] for r in res]
        return [sp.decode_pieces(h) for h in hyps], sum(len(h) + 1 for h in hyps)  # + the eos

    return run


def timed(system, groups: list[list[str]]) -> tuple[float, list[str], int]:
    start, hyps, tokens = time.perf_counter(), [], 0
    for batch in groups:
        h, n = system(batch)
        hyps += h
        tokens += n
    return time.perf_counter() - start, hyps, tokens


def run_worker(args, name: str, export_dir: Path, sources: list[str], refs: list[str]) -> dict:
    """One system, in this process alone: load, warm up on one group, time the whole set."""
    groups = [sources[i:i + args.batch_size] for i in range(0, len(sources), args.batch_size)]
    _, tok = load_model(args.model)
    limits = (args.max_batch_rows, args.max_cache_mb)
    make = {"ours-fp32": lambda: ours(args.model, "fp32", args.beam_size, args.device, *limits),
            "ours-bf16": lambda: ours(args.model, "bf16", args.beam_size, args.device, *limits),
            "ours-fp16": lambda: ours(args.model, "fp16", args.beam_size, args.device, *limits),
            "ours-int8": lambda: ours(args.model, "int8", args.beam_size),
            "hf-fp32": lambda: hf(export_dir / "marian", args.beam_size),
            "ct2-float32": lambda: ct2(export_dir / "ct2", "float32", args.beam_size, args.threads, tok.sp),
            "ct2-int8": lambda: ct2(export_dir / "ct2", "int8", args.beam_size, args.threads, tok.sp)}
    system = make[name]()
    system(groups[0])
    secs, hyps, tokens = timed(system, groups)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    result = {"seconds": secs, "tokens": tokens, "bleu": score(hyps, refs)["bleu"], "peak_rss_mb": peak_mb}
    if args.device.startswith("cuda"):  # what the weights, caches and activations took at most (torch's allocator)
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=default_model() or str(ROOT / "runs/multi30k/best.pt"))
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/multi30k/test_2016_flickr"))
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=0, help="first N sentences only")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="for ours-fp32/bf16/fp16 (cuda for `make gpu-check`)")
    p.add_argument("--max-batch-rows", type=int, help="ours: decoder rows at once (default: the Translator's)")
    p.add_argument("--max-cache-mb", type=float, help="ours: key/value cache budget (default: the Translator's)")
    p.add_argument("--systems", default="ours-fp32,ours-bf16,ours-int8,hf-fp32,ct2-float32,ct2-int8")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one system, print its JSON
    p.add_argument("--export-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = read_corpus(args.data)
    sources, refs = list(ds["src"]), list(ds["tgt"])
    if args.limit:
        sources, refs = sources[:args.limit], refs[:args.limit]
    if args.worker:
        print(json.dumps(run_worker(args, args.worker, Path(args.export_dir), sources, refs)))
        return

    # Each system runs in a fresh process of its own: in one process, CTranslate2's and torch's thread pools
    # slow each other down (ours bf16 measured 1.8× slower after CTranslate2 had run in the same process).
    tmp = Path(tempfile.mkdtemp(prefix="bench-decode-"))
    model, tok = load_model(args.model)
    names = args.systems.split(",")
    # the exports only for the systems that read them (the GPU machine has no ctranslate2)
    if any(n.startswith("hf-") for n in names):
        export_marian(model, tok, tmp / "marian")
    if any(n.startswith("ct2-") for n in names):
        export_ctranslate2(model, tok, tmp / "ct2")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                   if k in ("model", "data", "beam_size", "batch_size", "limit", "threads", "device", "max_batch_rows",
                            "max_cache_mb") and v is not None]
    for r in range(args.rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, *passthrough, f"--worker={n}", f"--export-dir={tmp}"],
                                 capture_output=True, text=True, check=True)
            run = json.loads(out.stdout.strip().splitlines()[-1])
            runs[n].append(dict(run, process_seconds=time.perf_counter() - start))
    results = {}
    for n in names:
        secs = statistics.median(x["seconds"] for x in runs[n])
        whole = statistics.median(x["process_seconds"] for x in runs[n])
        tokens, bleu = runs[n][0]["tokens"], runs[n][0]["bleu"]
        results[n] = {"tokens": tokens, "bleu": bleu, "seconds": round(secs, 2), "process_seconds": round(whole, 2),
                      "tokens_per_s": round(tokens / secs), "sentences_per_s": round(len(sources) / secs, 1),
                      "peak_rss_mb": round(max(x["peak_rss_mb"] for x in runs[n]))}
        if "gpu_peak_mb" in runs[n][0]:
            results[n]["gpu_peak_mb"] = round(max(x["gpu_peak_mb"] for x in runs[n]))
    ref_name = "ct2-int8" if "ct2-int8" in results else names[0]
    ref = results[ref_name]
    print(f"{len(sources)} sentences, beam {args.beam_size}, batch {args.batch_size}, {args.threads} threads, "
          f"median of {args.rounds} rounds; ratios are speed relative to {ref_name} (> 1 = faster)")
    print(f"{'system':<12} {'tok/s':>7} {'sent/s':>7} {'BLEU':>6} {'decode s':>8} {'ratio':>6} "
          f"{'process s':>9} {'ratio':>6} {'peak MB':>7}")
    for n in names:
        r = results[n]
        print(f"{n:<12} {r['tokens_per_s']:>7} {r['sentences_per_s']:>7} {r['bleu']:>6.2f} {r['seconds']:>8.2f} "
              f"{ref['seconds'] / r['seconds']:>5.2f}× {r['process_seconds']:>9.2f} "
              f"{ref['process_seconds'] / r['process_seconds']:>5.2f}× {r['peak_rss_mb']:>7}")
    for n in names:
        if "gpu_peak_mb" in results[n]:
            print(f"{n}: GPU memory at most {results[n]['gpu_peak_mb']} MiB (torch.cuda.max_memory_allocated)")
    if args.json:
        print(json.dumps({"beam_size": args.beam_size, "batch_size": args.batch_size, "device": args.device,
                          "sentences": len(sources), "results": results}))


if __name__ == "__main__":
    main()
