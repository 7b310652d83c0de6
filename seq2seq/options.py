"""One way to configure training: a YAML/JSON file and command-line flags, both parsed into the same frozen
dataclasses. Flags spell the fields (`--max-steps` ↔ `max_steps`, `--d-model` ↔ `d_model`) and override the file.
Also the flags that the inference command lines share (model, device, decoding options).

File layout:
    model: {d_model: 256, n_heads: 4, ...}     # ModelConfig without vocab_size (that comes from the tokenizer)
    data:  {train: [...], dev: ..., ...}      # DataConfig
    train: {max_steps: ..., ...}              # TrainConfig
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, DataConfig, DecodeConfig, ModelConfig, TrainConfig

SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
_SKIP = {("model", "vocab_size")}


def field_type(f: dataclasses.Field) -> Any:
    """A config field's flag type: bool, int, float, str, or "list" for tuples."""
    t = str(f.type)
    if "tuple" in t:
        return "list"
    for name, typ in (("bool", bool), ("int", int), ("float", float)):
        if t.startswith(name):
            return typ
    return str


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (default None = not given), grouped by section."""
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} ({cls.__name__})")
        for f in dataclasses.fields(cls):
            if (section, f.name) in _SKIP:
                continue
            typ = field_type(f)
            flag = "--" + f.name.replace("_", "-")
            if typ == "list":
                group.add_argument(flag, dest=f"{section}.{f.name}", nargs="+", default=None, metavar="CORPUS")
            else:
                group.add_argument(flag, dest=f"{section}.{f.name}", default=None, metavar=f.name.upper(),
                                   type=parse_bool if typ is bool else typ)


def read_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
    raw = raw or {}
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}; allowed: model, data, train")
    return {s: dict(raw.get(s) or {}) for s in SECTIONS}


def merge(file_sections: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """File values, then every flag that was given on top."""
    out = {s: dict(v) for s, v in file_sections.items()}
    for key, value in vars(args).items():
        if "." in key and value is not None:
            section, name = key.split(".", 1)
            out[section][name] = value
    return out


def build(sections: dict[str, dict[str, Any]], vocab_size: int | None = None) -> tuple[ModelConfig | None, DataConfig, TrainConfig]:
    """Dicts -> dataclasses. The ModelConfig needs the tokenizer's vocab_size, so it is None until that is known."""
    data = DataConfig.from_dict(sections["data"])
    train = TrainConfig.from_dict(sections["train"])
    model = None if vocab_size is None else ModelConfig.from_dict({**sections["model"], "vocab_size": vocab_size})
    return model, data, train


def add_model_flags(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """--model (default: the shipped model) and, for the commands that translate, --device and --precision."""
    from .checkpoint import default_model

    parser.add_argument("--model", default=default_model(), help="checkpoint file (default: the shipped model)")
    if device:
        parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda[:N]")
        parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])


def add_decode_flags(parser: argparse.ArgumentParser) -> None:
    """--beam-size, --length-penalty, ... spelled as DecodeConfig's fields (default: DecodeConfig's defaults)."""
    d = DecodeConfig()
    g = parser.add_argument_group("decoding (defaults: the paper's beam 4, α = 0.6)")
    g.add_argument("--beam-size", type=int, default=d.beam_size)
    g.add_argument("--length-penalty", type=float, default=d.length_penalty)
    g.add_argument("--n-best", type=int, default=d.n_best)
    g.add_argument("--max-len-a", type=float, default=d.max_len_a)
    g.add_argument("--max-len-b", type=int, default=d.max_len_b)
    g.add_argument("--min-len", type=int, default=d.min_len)
    g.add_argument("--sample", action="store_true")
    g.add_argument("--temperature", type=float, default=d.temperature)
    g.add_argument("--top-k", type=int, default=d.top_k)
    g.add_argument("--top-p", type=float, default=d.top_p)
    g.add_argument("--num-samples", type=int, default=d.num_samples)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--no-repeat-ngram-size", type=int, default=d.no_repeat_ngram_size)
    g.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty)


def decode_config_from_args(args: argparse.Namespace) -> DecodeConfig:
    names = [f for f in DecodeConfig.__dataclass_fields__ if f != "return_attention"]
    return DecodeConfig(**{f: getattr(args, f) for f in names})
