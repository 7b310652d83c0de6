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

from seq2seq_api.flags import (ArgumentParser, add_decode_flags, decode_config_from_args,  # noqa: F401
                               decode_options_from_args, parse_bool)

from .config import PRECISIONS, ConfigError, DataConfig, ModelConfig, TrainConfig, field_kind

SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
_SKIP = {("model", "vocab_size")}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (default None = not given), grouped by section."""
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} ({cls.__name__})")
        for f in dataclasses.fields(cls):
            if (section, f.name) in _SKIP:
                continue
            typ = field_kind(f)
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
        parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                            help="auto = bf16 on CUDA and on CPUs with bf16 matrix instructions (translations "
                                 "independent of the batch), else int8 on x86 CPUs, else fp32; fp16 needs CUDA, "
                                 "int8 runs on CPU (default auto)")
