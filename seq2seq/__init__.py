"""French→English translation with the Transformer of "Attention Is All You Need".

The configs import at once; the model and the Translator (which need torch) load on first use, so that the
torch-free parts (seq2seq.config, seq2seq.options) serve the gRPC client's flags without importing torch.
"""
from importlib import import_module

from .config import DataConfig, DecodeConfig, ModelConfig, TrainConfig

_LAZY = {"Transformer": ".model", "Memory": ".model", "DecoderState": ".model", "Translator": ".translator",
         "Translation": ".translator"}

__all__ = ["DataConfig", "DecodeConfig", "ModelConfig", "TrainConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
