"""French→English translation with the Transformer of "Attention Is All You Need"."""
from .config import DataConfig, DecodeConfig, ModelConfig, TrainConfig
from .model import DecoderState, Memory, Transformer
from .translator import Translation, Translator

__all__ = ["DataConfig", "DecodeConfig", "ModelConfig", "TrainConfig", "Transformer", "Memory", "DecoderState",
           "Translator", "Translation"]
