"""Checkpoints: one file holding weights, configs, the SentencePiece model and (for training) the optimizer and
scheduler, written atomically. Loading a checkpoint needs nothing else. Also: averaging the last k checkpoints, and
the shipped form of a model: a directory with model.safetensors (fp16), spm.model and config.json.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .model import Transformer
from .tokenizer import Tokenizer


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or inconsistent; the message says which file and why."""


def save(path: str | Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same directory, fsync it, rename it, fsync the directory: neither a crash
    nor a power cut leaves a half-written file under `path`, and a failed write (disk full) leaves no temporary file
    and the previous `path` as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())  # the data on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)  # the rename itself lives in the directory
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
WEIGHTS, TOKENIZER, CONFIG = "model.safetensors", "spm.model", "config.json"  # a model directory's files


def default_model() -> str | None:
    """The shipped model, when there is one (a directory models/<name>/ with model.safetensors); None otherwise.

    models/ of the checkout, else the installed copy (package data of `seq2seq_models`, see pyproject.toml)."""
    roots = [MODELS_DIR]
    spec = importlib.util.find_spec("seq2seq_models")
    if spec is not None and spec.submodule_search_locations:
        roots += [Path(p) for p in spec.submodule_search_locations]
    for root in roots:
        found = sorted(root.glob(f"*/{WEIGHTS}"))
        if found:
            return str(found[0].parent)
    return None


def save_model_dir(payload: dict[str, Any], out: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """The shipped form of a checkpoint: weights only (in `dtype`, half the size of fp32), tokenizer, configs."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in payload["model"].items()}
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / WEIGHTS))
    os.chmod(out / WEIGHTS, 0o644)  # safetensors writes 0600; a server running as another user must read it
    (out / TOKENIZER).write_bytes(payload["tokenizer"])
    (out / CONFIG).write_text(json.dumps({"model": payload["configs"]["model"]}, indent=2) + "\n")
    return out


def _load_dir(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    for name in (WEIGHTS, TOKENIZER, CONFIG):
        if not (path / name).is_file():
            raise CheckpointError(f"model directory {path} has no {name}")
    try:
        weights = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt or unreadable model file {path / WEIGHTS}: {str(e).splitlines()[0]}") from None
    try:
        configs = json.loads((path / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"corrupt or unreadable model file {path / CONFIG}: {str(e).splitlines()[0]}") from None
    weights = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    return {"model": weights, "configs": configs, "tokenizer": (path / TOKENIZER).read_bytes()}


def load(path: str | Path | None) -> dict[str, Any]:
    """A checkpoint file or model directory -> its payload; None (no --model and no shipped model) is an error."""
    if path is None:
        raise CheckpointError("no --model given and no shipped model found under models/")
    path = Path(path)
    if path.is_dir():
        return _load_dir(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own message suggests weights_only=False: unsafe, so not shown
        raise CheckpointError(f"corrupt or unreadable checkpoint {path}: not a seq2seq checkpoint file") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"corrupt or unreadable checkpoint {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(payload, dict) or not {"model", "configs", "tokenizer"} <= set(payload):
        raise CheckpointError(f"{path} is not a seq2seq checkpoint (expected keys model, configs, tokenizer)")
    return payload


def model_from_payload(payload: dict[str, Any], where: str = "checkpoint") -> tuple[Transformer, Tokenizer]:
    """Build the model and tokenizer a checkpoint describes, checking that they agree."""
    try:
        config = ModelConfig.from_dict(payload["configs"]["model"])
        tokenizer = Tokenizer(payload["tokenizer"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{where}: bad model config or tokenizer: {str(e).splitlines()[0]}") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{where}: tokenizer has {tokenizer.vocab_size} ids but the model expects "
                              f"{config.vocab_size}")
    model = Transformer(config)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{where}: weights do not match the config: {str(e).splitlines()[0]}") from None
    return model.eval(), tokenizer


def load_model(path: str | Path | None) -> tuple[Transformer, Tokenizer]:
    """A checkpoint file or model directory -> (model in eval mode on CPU, fp32, tokenizer)."""
    return model_from_payload(load(path), str(path))


def average(paths: list[Path]) -> dict[str, Any]:
    """The element-wise mean of the weights of several checkpoints (Vaswani et al. average the last 5 or 20)."""
    payloads = [load(p) for p in paths]
    out = dict(payloads[-1])
    out["model"] = {k: sum(p["model"][k].double() for p in payloads).div(len(payloads)).to(v.dtype)
                    for k, v in payloads[-1]["model"].items()}
    for key in ("optimizer", "scheduler"):
        out.pop(key, None)
    out["averaged"] = [str(p) for p in paths]
    return out
