"""Training (`seq2seq-train --config FILE --out DIR`): the paper's recipe (§5) on a token-batched stream.

Resumes exactly: running again with the same --out continues from the newest checkpoint (model, optimizer,
scheduler, data position; dropout randomness is derived from (seed, rank, step)). Multi-process with
`torchrun --nproc-per-node N -m seq2seq.train ...` (gloo on CPU, NCCL on CUDA): each step takes W·A consecutive
micro-batches of the stream, rank r the r-th block of A, and the loss is normalised by the global target-token
count, so W processes with accumulation A/W see the same batches as one process with accumulation A, and make the
same update when dropout is 0 (dropout draws differ per rank). SIGTERM or SIGINT (preemption, Ctrl-C) stops at the
next step boundary with a checkpoint and exit status 0, so that the same command resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from . import checkpoint as ckpt
from .checkpoint import CheckpointError
from .config import ConfigError, TrainConfig
from .data import BatchStream, DataError, read_corpora, read_corpus, tokenize
from .evaluate import dev_bleu, dev_loss
from .loss import label_smoothed_loss
from .model import Transformer
from .optim import build_optimizer
from .options import ArgumentParser, add_config_flags, build, merge, read_config_file
from .tokenizer import Tokenizer

log = logging.getLogger("seq2seq.train")


class Run:
    """Everything a training run holds: configs, tokenizer, data, model, optimizer, and where it stands."""

    def __init__(self, out: Path, sections: dict, resume: dict | None, weights_only: bool = False):
        self.out, self.rank, self.world = out, dist.get_rank() if dist.is_initialized() else 0, \
            dist.get_world_size() if dist.is_initialized() else 1
        _, self.data_cfg, self.train_cfg = build(sections)
        t = self.train_cfg
        use_cuda = t.device == "cuda" or (t.device == "auto" and torch.cuda.is_available())
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu")
        if t.threads:
            torch.set_num_threads(t.threads)
        self.tokenizer = self._tokenizer(resume)
        self.model_cfg, _, _ = build(sections, self.tokenizer.vocab_size)
        self.sections = sections
        self._data()
        torch.manual_seed(t.seed)  # identical initial weights on every rank
        self.model = Transformer(self.model_cfg).to(self.device)
        self.optimizer, self.scheduler = build_optimizer(self.model, t, self.model_cfg.d_model)
        # fp16 (CUDA) needs loss scaling against underflow; bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        self.step, self.best_bleu, self.bad_evals, self.elapsed = 0, -1.0, 0, 0.0
        self.continued_from: str | None = None  # train.init_from, in the first sitting of a continued run
        if resume and weights_only:  # train.reset_optimizer: a fresh Adam and schedule from train.init_step
            self.model.load_state_dict(resume["model"])
            self.step = t.init_step
        elif resume:
            self._restore(resume)
        self.net = torch.compile(self.model) if t.compile else self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(self.net)

    def _tokenizer(self, resume: dict | None) -> Tokenizer:
        path = self.out / "spm.model"
        if resume:
            return Tokenizer(resume["tokenizer"])
        if self.rank == 0 and not path.exists():
            d = self.data_cfg
            corpora = d.train if d.spm_data == "mix" else [  # "real": each real corpus once, whole
                dataclasses.replace(c, weight=1.0) for c in d.train if not c.synthetic and c.weight]
            if not corpora:
                raise ConfigError("spm_data 'real' needs a training corpus not marked synthetic")
            raw = read_corpora(corpora, d.src_lang, d.tgt_lang, self.train_cfg.seed)
            log.info("training SentencePiece (%d pieces) on %d pairs", self.data_cfg.vocab_size, len(raw))
            sentences = (s for pair in zip(raw["src"], raw["tgt"]) for s in pair)
            Tokenizer.train(sentences, self.data_cfg.vocab_size, self.data_cfg.spm_model_type,
                            self.data_cfg.spm_max_sentences, bt_tag=self.data_cfg.bt_tag).save(path)
        if self.world > 1:
            dist.barrier()
        return Tokenizer.load(path)

    def _data(self) -> None:
        d = self.data_cfg
        cache = d.cache_dir or str(self.out / "cache")
        train = tokenize(read_corpora(d.train, d.src_lang, d.tgt_lang, self.train_cfg.seed), self.tokenizer, d.max_len,
                         cache, bt_tag=d.bt_tag)
        self.stream = BatchStream(train, d.max_tokens, self.tokenizer.pad_id, self.train_cfg.seed)
        self.dev = None
        if d.dev:
            self.dev_raw = read_corpus(d.dev, d.src_lang, d.tgt_lang)
            self.dev = tokenize(self.dev_raw, self.tokenizer, 0, cache)
        if self.rank == 0:
            log.info("train: %d pairs in %d batches per epoch; dev: %s pairs", len(train), len(self.stream),
                     len(self.dev) if self.dev is not None else "no")

    def _restore(self, payload: dict) -> None:
        saved = payload["state"].get("micro_batches_per_step")
        now = self.world * self.train_cfg.accum_steps
        if saved is not None and saved != now:
            raise ConfigError(f"this run took {saved} micro-batches per step (processes × accum_steps) and would "
                              f"now take {now}: resume (or continue with init_from) with the same product, or "
                              "train from scratch in a new --out")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        s = payload["state"]
        self.step, self.best_bleu, self.bad_evals, self.elapsed = s["step"], s["best_bleu"], s["bad_evals"], s["elapsed"]

    def payload(self) -> dict:
        # The data position is step × micro_batches_per_step; the latter must stay the same on resume.
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "tokenizer": self.tokenizer.model_proto,
                "configs": {"model": self.model_cfg.to_dict(), "data": self.data_cfg.to_dict(),
                            "train": self.train_cfg.to_dict()},
                "state": {"step": self.step, "best_bleu": self.best_bleu, "bad_evals": self.bad_evals,
                          "elapsed": self.elapsed, "micro_batches_per_step": self.world * self.train_cfg.accum_steps}}

    # ---- one optimizer step ---------------------------------------------------------------------------------------

    def autocast(self):
        p = self.train_cfg.precision
        if p == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)

    def train_step(self) -> dict:
        """Steps 1–4 of one update: fetch this rank's micro-batches, count the global target tokens, forward and
        backward each (gradients synchronised on the last), then clip and update."""
        t, a, w = self.train_cfg, self.train_cfg.accum_steps, self.world
        # 1. This rank's micro-batches: global step s uses stream positions [s·W·A, (s+1)·W·A).
        first = self.step * w * a + self.rank * a
        batches = [self.stream.batch(first + i).to(self.device) for i in range(a)]
        # 2. Normalise by the global number of target tokens (DDP averages gradients over W, hence the factor W).
        counts = torch.tensor([sum(b.n_tgt_tokens for b in batches), sum(b.n_src_tokens for b in batches)],
                              dtype=torch.float64, device=self.device)
        if w > 1:
            dist.all_reduce(counts)
        n_tgt = counts[0].item()
        self.net.train()
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        torch.manual_seed(t.seed * 1_000_003 + self.rank * 7919 + self.step)  # dropout, reproducible on resume
        for i, b in enumerate(batches):
            sync = nullcontext() if (w == 1 or i == a - 1) else self.net.no_sync()
            with sync:
                keep = b.tgt_out_ids.ne(self.tokenizer.pad_id)  # (B, T): no output layer on padding
                with self.autocast():
                    logits = self.net(b.src_ids, b.tgt_in_ids, tgt_keep_mask=keep)  # (N, V)
                loss, nll, _ = label_smoothed_loss(logits, b.tgt_out_ids[keep], t.label_smoothing,
                                                   self.tokenizer.pad_id)
                self.scaler.scale(loss * w / n_tgt).backward()
            totals += torch.stack([loss.detach(), nll.detach()]).double()
        # 3. Clip (optional) and update with the scheduled learning rate.
        if t.clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        # 4. Report global per-token values.
        if w > 1:
            dist.all_reduce(totals)
        loss, nll = (totals / n_tgt).tolist()
        return {"step": self.step, "loss": loss, "nll": nll, "lr": lr, "tokens": counts.sum().item(),
                "tgt_tokens": n_tgt}


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted(out.glob("checkpoint_*.pt"))
    return found[-1] if found else None


def _setup_distributed() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def _sections(args: argparse.Namespace, resume: dict | None) -> dict:
    file_sections = read_config_file(args.config) if args.config else {"model": {}, "data": {}, "train": {}}
    if resume:  # the run's model and data are fixed; the file and flags may change train settings (e.g. max_steps)
        saved = resume["configs"]
        model = {k: v for k, v in saved["model"].items() if k != "vocab_size"}
        base = {"model": model, "data": saved["data"], "train": {**saved["train"], **file_sections["train"]}}
        merged = merge(base, args)
        return {"model": model, "data": saved["data"], "train": merged["train"]}
    return merge(file_sections, args)


def _start(sections: dict) -> dict | None:
    """The checkpoint a new run continues from (train.init_from), whose model it keeps: the run's model section must
    be empty or the same."""
    path = sections["train"].get("init_from")
    if path is None:
        return None
    if not str(path).strip():
        raise ConfigError("train.init_from is empty: give a step checkpoint (checkpoint_*.pt)")
    start = ckpt.load(Path(path).expanduser())
    train = TrainConfig.from_dict(sections["train"])
    if train.reset_optimizer:  # weights only: any checkpoint or model directory, the clock from 0
        step, minutes = train.init_step or start.get("state", {}).get("step", 0), 0.0
        if not step:
            raise ConfigError(f"{path} records no training step: give train.init_step, the step it was trained to "
                              "(its model card says), so that the learning rate goes on from there")
        sections["train"]["init_step"] = step
    elif not {"optimizer", "scheduler", "state"} <= set(start):
        raise ConfigError(f"train.init_from needs a step checkpoint (checkpoint_*.pt) with its optimizer; {path} is "
                          "an exported or averaged model (train.reset_optimizer takes those)")
    else:
        step, minutes = start["state"]["step"], start["state"]["elapsed"] / 60
    if step >= train.max_steps or (train.max_minutes and minutes >= train.max_minutes):
        raise ConfigError(f"{path} already stands at step {step} after {minutes:.1f} minutes: max_steps "
                          f"({train.max_steps}) and max_minutes ({train.max_minutes:g}) count from the start of that "
                          "run, so raise them")
    saved = {k: v for k, v in start["configs"]["model"].items() if k != "vocab_size"}
    differ = sorted(k for k, v in sections["model"].items() if saved.get(k) != v)
    if differ:
        raise ConfigError(f"train.init_from keeps the model of {path}; these model settings differ: {', '.join(differ)}")
    sections["model"] = saved
    return start


class Logger:
    """Every metric as one JSON line in OUT/log.jsonl (rank 0 only)."""

    def __init__(self, path: Path, enabled: bool):
        self.f = open(path, "a", encoding="utf-8") if enabled else None

    def write(self, record: dict) -> None:
        if self.f:
            self.f.write(json.dumps(record) + "\n")
            self.f.flush()


class StopSignals:
    """SIGTERM and SIGINT ask training to stop. The handler only records the signal; the loop looks at `received`
    at each step boundary and after an evaluation. A second signal is not caught: the previous handlers act on it
    (a second Ctrl-C interrupts a hung step). The previous handlers come back on exit; a signal that was ignored
    (SIGINT of a background job) stays ignored."""

    def __init__(self):
        self.received: int | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # the only thread that may set handlers
            for sig in (signal.SIGTERM, signal.SIGINT):
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self.previous[sig] = signal.signal(sig, self._record)
        return self

    def _record(self, signum: int, frame) -> None:
        if self.received is not None:  # the second one: the user insists
            self.__exit__()
            signal.raise_signal(signum)
            return
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():  # None: a handler set outside Python, not restorable
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def agree_to_stop(run: Run, out_of_time: bool, signalled: bool) -> tuple[bool, bool]:
    """(out of time, stop signal) as every rank will act on them, so that all stop at the same step: rank 0's clock
    decides the time limit; a signal received by any rank (the launcher may pass it to some only) stops all."""
    if run.world == 1:
        return out_of_time, signalled
    flags = torch.tensor([float(out_of_time and run.rank == 0), float(signalled)], device=run.device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0].item()), bool(flags[1].item())


def train(run: Run) -> dict:
    """The loop: steps, periodic dev evaluation, checkpoints, early stopping; on SIGTERM/SIGINT, a checkpoint at the
    next step boundary and an early return (no averaging: the run is not over). Returns the last metrics."""
    t, out, main = run.train_cfg, run.out, run.rank == 0
    logger = Logger(out / "log.jsonl", main)
    if run.continued_from:
        logger.write({"step": run.step, "event": "continued", "from": run.continued_from})
    elif run.step:
        logger.write({"step": run.step, "event": "resumed"})
    bar = tqdm(total=t.max_steps, initial=run.step, disable=not main or None, dynamic_ncols=True)
    last, window, tic, stop, interrupted = {}, [], time.perf_counter(), False, False
    with StopSignals() as signals:
        while run.step < t.max_steps and not stop:
            record = run.train_step()
            now = time.perf_counter()
            run.elapsed += now - tic
            window.append((now - tic, record["tokens"], record["tgt_tokens"], record["loss"], record["nll"]))
            tic = now
            last = record
            out_of_time, interrupted = agree_to_stop(run, t.max_minutes > 0 and run.elapsed >= 60 * t.max_minutes,
                                                     signals.received is not None)
            if run.step % t.log_every == 0 or run.step == t.max_steps or interrupted:
                record = summarize(record["step"], record["lr"], window, run.elapsed)
                window = []
                logger.write(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", ppl=f"{record['ppl']:.1f}",
                                tok_s=f"{record['tokens_per_s']:.0f}", lr=f"{record['lr']:.2e}")
            bar.update(1)
            if interrupted:
                if main:
                    save_interrupted(run, logger, signals.received)
                break
            done = run.step >= t.max_steps or out_of_time
            if (t.eval_every and run.step % t.eval_every == 0) or done:
                stop = evaluate(run, logger) or out_of_time
                _, interrupted = agree_to_stop(run, False, signals.received is not None)  # a signal while evaluating
                if interrupted:
                    if main:
                        save_interrupted(run, logger, signals.received)
                    break
            if main and (run.step % t.save_every == 0 or done or stop):
                save(run)
            tic = time.perf_counter()  # evaluation and saving do not count as training time
    bar.close()
    if main and not interrupted:
        finish(run)
    return last


def save_interrupted(run: Run, logger: Logger, signum: int | None) -> None:
    """The checkpoint of a stopped run, at once: no evaluation first, as the grace period before SIGKILL may be
    short."""
    path = save(run)
    name = signal.Signals(signum).name if signum else None  # None: another rank received it
    logger.write({"step": run.step, "event": "interrupted", "signal": name, "checkpoint": str(path)})
    log.info("%s: stopped at step %d and saved %s; the same command resumes", name or "a signal to another rank",
             run.step, path)


def summarize(step: int, lr: float, window: list[tuple], elapsed: float) -> dict:
    """One log record for the steps since the last one: token-weighted loss and NLL, throughput."""
    secs, tokens, tgt = (sum(w[i] for w in window) for i in range(3))
    loss, nll = (sum(w[2] * w[i] for w in window) / tgt for i in (3, 4))
    return {"step": step, "loss": loss, "nll": nll, "ppl": math.exp(min(nll, 50)), "lr": lr,
            "tokens_per_s": tokens / secs, "steps": len(window), "elapsed_s": elapsed}


def evaluate(run: Run, logger: Logger) -> bool:
    """Dev loss and dev BLEU (greedy); keeps best.pt; returns True when early stopping says to stop."""
    if run.dev is None:
        return False
    stop = False
    if run.rank == 0:
        d = run.data_cfg
        record = {"step": run.step, **dev_loss(run.model, run.dev, d.max_tokens, run.tokenizer.pad_id,
                                                run.train_cfg.label_smoothing, run.device)}
        n = d.dev_bleu_sentences or len(run.dev_raw)
        record.update(dev_bleu(run.model, run.tokenizer, run.dev_raw["src"][:n], run.dev_raw["tgt"][:n], run.device))
        logger.write(record)
        log.info("step %d: dev loss %.3f, dev BLEU %.2f", run.step, record["dev_loss"], record["dev_bleu"])
        if record["dev_bleu"] > run.best_bleu:
            run.best_bleu, run.bad_evals = record["dev_bleu"], 0
            ckpt.save(run.out / "best.pt", {k: v for k, v in run.payload().items() if k not in ("optimizer",)})
        else:
            run.bad_evals += 1
        stop = 0 < run.train_cfg.patience <= run.bad_evals
    if run.world > 1:
        flag = torch.tensor([float(stop)], device=run.device)
        dist.broadcast(flag, 0)
        stop = bool(flag.item())
    return stop


def save(run: Run) -> Path:
    path = run.out / f"checkpoint_{run.step:08d}.pt"
    ckpt.save(path, run.payload())
    for old in sorted(run.out.glob("checkpoint_*.pt"))[:-max(run.train_cfg.keep_checkpoints, 1)]:
        old.unlink()
    return path


def finish(run: Run) -> None:
    """Average the last k checkpoints and draw the loss curve."""
    k = run.train_cfg.average_last
    if k > 1:
        paths = sorted(run.out.glob("checkpoint_*.pt"))[-k:]
        ckpt.save(run.out / "averaged.pt", ckpt.average(paths))
        log.info("averaged %d checkpoints into %s", len(paths), run.out / "averaged.pt")
    from .plot import plot_log
    plot_log(run.out / "log.jsonl", run.out / "loss.png")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="seq2seq-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML or JSON file with model/data/train sections")
    parser.add_argument("--out", required=True, help="run directory: checkpoints, log.jsonl, loss.png; reused to resume")
    add_config_flags(parser)
    return parser.parse_args(argv)


# oneDNN, which computes bf16 matrix products on CPU, compiles and keeps a kernel with its scratch memory for every
# matrix shape it meets, up to 1,024 of them by default. Token-count batches bring new shapes at every step, and a
# one-core run's memory grew past 20 GB within 900 steps (killed by the kernel); with 256 kept it stayed under 3.3 GB
# at the same speed (docs/training-log.md, 2026-12-02). Read when the first kernel is made; a value of yours stays.
ONEDNN_CACHE = "256"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        _setup_distributed()
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        latest = latest_checkpoint(out)
        resume = ckpt.load(latest) if latest else None
        sections = _sections(args, resume)
        start = None if resume else _start(sections)
        run = Run(out, sections, resume or start, weights_only=bool(start) and sections["train"].get("reset_optimizer"))
        if start:
            run.best_bleu, run.bad_evals = -1.0, 0  # a new run: its own best.pt and patience, on its own data
            run.continued_from = sections["train"]["init_from"]
            log.info("continuing %s from step %d on this run's data", sections["train"]["init_from"], run.step)
        if resume:
            recorded = resume["state"]["step"]
            if run.step != recorded:
                raise CheckpointError(f"{latest} records step {recorded}, but the restored run stands at {run.step}")
            log.info("resumed from %s at step %d", latest, run.step)
        train(run)
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"seq2seq-train: error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
