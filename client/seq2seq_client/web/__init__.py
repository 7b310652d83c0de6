"""`seq2seq-web`: the HTTP gateway of the translation service, a gRPC client of one or more seq2seq servers."""
