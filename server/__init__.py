"""The gRPC translation server (`seq2seq-serve`): a thin adapter between proto/translation/v1 and seq2seq's
Translator, with dynamic batching across requests, health, reflection, limits and metrics."""
