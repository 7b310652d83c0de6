"""Training speed: our `seq2seq.model.Transformer` against Hugging Face `MarianMTModel` with the same architecture.

Both models get the same weights, the same token-count batches of Multi30k (fr→en, a SentencePiece vocabulary trained
on the spot), the same label-smoothed loss (seq2seq.loss, ε = 0.1), Adam(0.9, 0.98, 1e-9) and warmup lr; only the
model differs. A step is forward + backward + Adam step; tokens/s counts non-pad source + target tokens. Variants
(fp32 / bf16 autocast / torch.compile) take turns in rotating order, each round over the same steps/rounds batches;
reported: the median round and the best (each batch at its fastest round, robust to other processes on a shared
machine). Before timing, a check with dropout 0 compares the logits of both models on one batch.

    python bench/train_speed.py --steps 20 --warmup 3 [--config small|tiny|base] [--max-tokens 4096] [--json]
    python bench/train_speed.py --device cuda --config base --max-tokens 25000 --variants ours-fp32,ours-bf16
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import MarianConfig, MarianMTModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from seq2seq.config import ModelConfig, TrainConfig  # noqa: E402
from seq2seq.data import BatchStream, read_corpus, tokenize  # noqa: E402
from seq2seq.export import marian_config, marian_state_dict  # noqa: E402
from seq2seq.loss import label_smoothed_loss  # noqa: E402
from seq2seq.model import Transformer  # noqa: E402
from seq2seq.optim import build_optimizer  # noqa: E402
from seq2seq.tokenizer import Tokenizer  # noqa: E402

log = logging.getLogger("train_speed")
VARIANTS = ("ours-fp32", "ours-bf16", "ours-compile-fp32", "ours-compile-bf16", "hf-fp32", "hf-bf16",
            "hf-eager-fp32", "hf-eager-bf16")  # hf = attn_implementation "sdpa" (its default), hf-eager = "eager"


# ---- data and models: the project's own tokenizer, batches and Marian export mapping -----------------------------

def make_batches(prefix: str, vocab_size: int, max_tokens: int, max_len: int, seed: int, n: int) -> tuple[list, int]:
    """The first n token-count batches of a training stream over the corpus, as seq2seq-train makes them."""
    raw = read_corpus(prefix)
    tok = Tokenizer.train((s for pair in zip(raw["src"], raw["tgt"]) for s in pair), vocab_size)
    stream = BatchStream(tokenize(raw, tok, max_len), max_tokens, tok.pad_id, seed)
    return [stream.batch(i) for i in range(n)], tok.pad_id


def copy_weights(ours: Transformer, hf: MarianMTModel) -> None:
    """Our parameters into Marian, through the exporter's name mapping (seq2seq.export)."""
    missing, unexpected = hf.load_state_dict(marian_state_dict(ours), strict=False)
    assert not unexpected and all("embed_positions" in k for k in missing), (missing, unexpected)
    assert hf.lm_head.weight is hf.model.shared.weight is hf.model.decoder.embed_tokens.weight, "Marian not tied"


def build_pair(c: ModelConfig, seed: int, attn: str = "sdpa") -> tuple[Transformer, MarianMTModel]:
    torch.manual_seed(seed)
    ours = Transformer(c)
    hf = MarianMTModel(MarianConfig(**marian_config(ours), attn_implementation=attn))
    copy_weights(ours, hf)
    return ours, hf


def forward_fn(name: str, model: torch.nn.Module):
    """(src, tgt_in, keep) -> logits (N, V) at the kept target positions, the same call for every variant.

    Ours computes the output layer only there (`tgt_keep_mask`, as seq2seq-train does); HF has no such option, so
    it computes every position and the padding rows are dropped afterwards."""
    if name.startswith("hf"):
        return lambda src, tgt_in, keep: model(input_ids=src, attention_mask=src.ne(model.config.pad_token_id),
                                               decoder_input_ids=tgt_in, use_cache=False).logits[keep]
    if "compile" in name:
        model = torch.compile(model, dynamic=True)
    return lambda src, tgt_in, keep: model(src, tgt_in, tgt_keep_mask=keep)


def check_logits(c: ModelConfig, batch, device: torch.device) -> float:
    """Max |logits_ours − logits_HF| over one batch, dropout 0, eval mode, fp32."""
    ours, hf = build_pair(c.replace(dropout=0.0), seed=1)
    ours.to(device).eval(), hf.to(device).eval()
    keep = batch.tgt_out_ids.ne(ours.pad_id)
    args = (batch.src_ids, batch.tgt_in_ids, keep)
    with torch.no_grad():
        a, b = forward_fn("ours", ours)(*args), forward_fn("hf", hf)(*args)
    assert torch.equal(a[:, c.pad_id], b[:, c.pad_id]), "the <pad> logit should be -inf in both"
    diff = (a[:, :c.pad_id] - b[:, :c.pad_id]).abs().max().item()  # <pad> is the last column
    return diff


# ---- timing -------------------------------------------------------------------------------------------------------

class Runner:
    """One variant: its model, optimizer, lr schedule and the timings of its rounds."""

    def __init__(self, name: str, model: torch.nn.Module, train: TrainConfig, d_model: int, pad: int,
                 device: torch.device):
        model.to(device)  # before the optimizer is built on its parameters
        self.name, self.model, self.pad, self.epsilon = name, model, pad, train.label_smoothing
        self.device = device
        self.forward = forward_fn(name, model)
        self.optimizer, self.scheduler = build_optimizer(model, train, d_model)
        self.rounds: list[list[float]] = []  # seconds per step, per round
        model.train()

    def step(self, batch) -> None:
        keep = batch.tgt_out_ids.ne(self.pad)  # (B, T)
        amp = (torch.autocast(self.device.type, dtype=torch.bfloat16) if "bf16" in self.name
               else contextlib.nullcontext())
        with amp:
            logits = self.forward(batch.src_ids, batch.tgt_in_ids, keep)  # (N, V)
        loss, _, n_tokens = label_smoothed_loss(logits, batch.tgt_out_ids[keep], self.epsilon, self.pad)
        (loss / n_tokens).backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self, batches) -> None:
        times = []
        for batch in batches:
            start = time.perf_counter()
            self.step(batch)
            if self.device.type == "cuda":
                torch.cuda.synchronize()  # the step's kernels have finished, not only been queued
            times.append(time.perf_counter() - start)
        self.rounds.append(times)

    def tokens_per_s(self, tokens: int) -> tuple[float, float]:
        """(median over rounds, best: each batch at its fastest round); the best resists other processes' bursts."""
        median = statistics.median(tokens / sum(times) for times in self.rounds)
        return median, tokens / sum(map(min, zip(*self.rounds)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=("tiny", "small", "base"), default="small")
    p.add_argument("--data", default="../shared/data/multi30k/train", help="prefix of PREFIX.{fr,en}.gz, from root")
    p.add_argument("--spm-vocab", type=int, default=8000)
    p.add_argument("--max-tokens", type=int, default=4096, help="padded source + target tokens per batch")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds over the same steps/rounds batches")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 = torch's default")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (the batches are moved there before timing)")
    p.add_argument("--json", action="store_true", help="also print a one-line JSON summary")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")

    # 1. Data: tokenize, batch; the same batches for every variant.
    needed = args.warmup + -(-args.steps // args.rounds)  # the same timed batches in every round
    batches, pad = make_batches(str(ROOT / args.data), args.spm_vocab, args.max_tokens, args.max_len, args.seed,
                                needed)
    device = torch.device(args.device)
    batches = [b.to(device) for b in batches]
    cfg = getattr(ModelConfig, args.config)(pad + 1)
    log.info("config %s: %s; %d threads; %d batches, mean %.0f sentences", args.config, cfg, torch.get_num_threads(),
             needed, statistics.mean(b.src_ids.size(0) for b in batches))

    # 2. Apples to apples: same weights give the same logits.
    max_diff = check_logits(cfg, batches[0], device)
    log.info("max |logits ours - logits HF| (dropout 0, same weights): %.2e", max_diff)

    # 3. Warm up every variant (compiles), then interleaved rounds in rotating order.
    runners = []
    for name in variants:
        ours, hf = build_pair(cfg, args.seed, "eager" if "eager" in name else "sdpa")
        runners.append(Runner(name, hf if name.startswith("hf") else ours, TrainConfig(), cfg.d_model, pad, device))
        start = time.perf_counter()
        for batch in batches[:args.warmup]:
            runners[-1].step(batch)
        log.info("%s: warmup %.1f s", name, time.perf_counter() - start)
    timed = batches[args.warmup:]
    tokens = sum(b.n_src_tokens + b.n_tgt_tokens for b in timed)
    for r in range(args.rounds):
        for runner in runners[r % len(runners):] + runners[:r % len(runners)]:
            runner.run(timed)
        log.info("round %d/%d: %s", r + 1, args.rounds,
                 ", ".join(f"{x.name} {tokens / sum(x.rounds[-1]):.0f}" for x in runners))
    report(args, cfg, runners, max_diff, tokens)


def report(args, cfg: ModelConfig, runners: list[Runner], max_diff: float, tokens: int) -> None:
    speed, best = {}, {}
    for r in runners:
        speed[r.name], best[r.name] = r.tokens_per_s(tokens)
    refs = [ref for ref in ("hf-fp32", "hf-bf16") if ref in speed]
    print(f"\n{args.config}: d_model {cfg.d_model}, layers {cfg.n_layers}+{cfg.n_dec_layers}, heads {cfg.n_heads}, "
          f"d_ff {cfg.d_ff}, V {cfg.vocab_size}; max_tokens {args.max_tokens}; {torch.get_num_threads()} threads; "
          f"{args.rounds} rounds x {len(runners[0].rounds[0])} steps; max logit diff {max_diff:.2e}")
    print(f"{'variant':<20}{'median tok/s':>13}{'best tok/s':>12}"
          + "".join(f"{'/ ' + ref + ' (med, best)':>28}" for ref in refs))
    for name in speed:
        ratios = "".join(f"{speed[name] / speed[ref]:>22.2f}{best[name] / best[ref]:>6.2f}" for ref in refs)
        print(f"{name:<20}{speed[name]:>13.0f}{best[name]:>12.0f}{ratios}")
    if args.json:
        print(json.dumps({
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "config": args.config,
            "max_tokens": args.max_tokens, "threads": torch.get_num_threads(), "steps": args.steps,
            "rounds": args.rounds, "torch": torch.__version__, "max_logit_diff": max_diff, "device": args.device,
            **({"gpu_peak_mb": round(torch.cuda.max_memory_allocated() / 2 ** 20)} if args.device.startswith("cuda")
               else {}),
            "tokens_per_s_median": {k: round(v) for k, v in speed.items()},
            "tokens_per_s_best": {k: round(v) for k, v in best.items()},
            **{f"ratio_vs_{ref}": {k: round(v / speed[ref], 3) for k, v in speed.items()} for ref in refs},
            **{f"best_ratio_vs_{ref}": {k: round(v / best[ref], 3) for k, v in best.items()} for ref in refs}}))

if __name__ == "__main__":
    main()
