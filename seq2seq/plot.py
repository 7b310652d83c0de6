"""The loss curve of a run: OUT/log.jsonl -> PNG (training loss and, when present, dev loss and dev BLEU)."""
from __future__ import annotations

import json
from pathlib import Path


def plot_log(log_path: str | Path, png_path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(log_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [r for r in records if "loss" in r]
    dev = [r for r in records if "dev_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss (label-smoothed)")
    if dev:
        ax.plot([r["step"] for r in dev], [r["dev_loss"] for r in dev], "o-", label="dev loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per target token")
    if dev and "dev_bleu" in dev[0]:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in dev], [r["dev_bleu"] for r in dev], "s--", color="tab:green", label="dev BLEU")
        ax2.set_ylabel("dev BLEU (greedy)")
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def plot_continuations(records: list[dict], png_path: str | Path) -> None:
    """Dev BLEU against cumulative training minutes, one segment per continued-training run (scripts/
    continue_training.py's card records, each with cumulative_minutes): from the model it started from to its best
    candidate. Solid: shipped; dashed: not shipped. Each segment compares like with like (one precision), so
    segments of different days need not meet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(records[0]["dev_after"]) if records else []
    for name, color in zip(names, ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        for i, r in enumerate(records):
            end = r["cumulative_minutes"]
            xs, ys = [end - r["minutes"], end], [r["dev_before"][name], r["dev_after"][name]]
            shipped = r.get("shipped", True)
            ax.plot(xs, ys, "-" if shipped else "--", marker="o", color=color, alpha=1.0 if shipped else 0.6,
                    markevery=None if shipped else [1], markerfacecolor=color if shipped else "white",
                    label=name if i == 0 else None)
    ax.set_xlabel("cumulative fr→en training minutes")
    ax.set_ylabel("dev BLEU (beam 4)")
    ax.set_title("continued training: shipped (solid), not shipped (dashed)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
