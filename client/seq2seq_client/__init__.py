"""The Python client of the seq2seq translation service: TranslatorClient (no torch) and `seq2seq-client`."""
from .client import TranslatorClient

__all__ = ["TranslatorClient"]
