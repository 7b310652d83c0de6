"""`seq2seq-client`: translate through a seq2seq server.

    seq2seq-client --server localhost:50051 "Bonjour le monde." "Merci."
    seq2seq-client --server localhost:50051 < french.txt > english.txt      # one text per line
    seq2seq-client --server localhost:50051 --file french.txt --beam-size 8 --json
    seq2seq-client --server localhost:50051 --file rapport.docx --out report.docx   # a whole .txt/.html/.docx file
    seq2seq-client --server localhost:50051 --health                          # exit 0 iff SERVING

Errors (server down, deadline passed, input rejected) print one line on stderr and exit 1; a bad flag exits 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict
from tqdm import tqdm

from seq2seq_api.flags import ArgumentParser, add_decode_flags, decode_options_from_args

from .client import TranslatorClient
from .documents import DocumentError, Job, open_document, translate_in_threads, translated_name

CHUNK = 64  # texts per request when reading many lines (the server's default --max-texts)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="seq2seq-client", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("texts", nargs="*", help="French texts; none = read stdin, one text per line")
    p.add_argument("--server", default=os.environ.get("SEQ2SEQ_SERVER", "localhost:50051"),
                   help="HOST:PORT or a gRPC target such as dns:///server:50051 (env SEQ2SEQ_SERVER)")
    p.add_argument("--file", help="a .txt, .html or .docx file to translate whole into --out, its layout kept, with "
                                  "progress on stderr; a .txt without --out: one text per line, printed")
    p.add_argument("--out", help="where --file's translation goes (default: NAME_en.EXT beside it)")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline per call, seconds (default 60)")
    p.add_argument("--api-key", default=os.environ.get("SEQ2SEQ_API_KEY", ""), help="(env SEQ2SEQ_API_KEY)")
    p.add_argument("--tls-ca", default="", help="PEM file of the CA to trust: TLS on")
    p.add_argument("--load-balancing", default="pick_first", choices=["pick_first", "round_robin"])
    p.add_argument("--no-split", action="store_true", help="translate each line whole, not sentence by sentence")
    p.add_argument("--scores", action="store_true", help="ask for scores and per-token log-probabilities")
    p.add_argument("--json", action="store_true", help="one JSON object per text (all hypotheses, scores)")
    p.add_argument("--stream", action="store_true", help="use TranslateStream: each result as soon as it is done")
    p.add_argument("--attention", metavar="FILE.png",
                   help="draw the first sentence's attention as a heatmap (matplotlib)")
    p.add_argument("--attention-html", metavar="FILE.html",
                   help="write the first sentence's attention maps as one self-contained HTML viewer")
    p.add_argument("--kind", default="cross", choices=["cross", "decoder_self", "encoder_self"],
                   help="which attention --attention draws (default cross)")
    p.add_argument("--layer", type=int, default=None, help="layer for --attention, 0-based (default: the last)")
    p.add_argument("--head", type=int, default=None, help="head for --attention, 0-based (default: the average)")
    p.add_argument("--health", action="store_true", help="print the health status; exit 0 iff SERVING")
    p.add_argument("--info", action="store_true", help="print the server's ModelInfo as JSON")
    add_decode_flags(p, defaults=False)  # DecodeConfig's fields; unset = the server's default
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = None
    try:
        client = TranslatorClient(args.server, timeout=args.timeout, api_key=args.api_key, tls_ca=args.tls_ca,
                                  load_balancing=args.load_balancing)
        if args.health:
            status = client.health()
            print(status)
            return 0 if status == "SERVING" else 1
        if args.info:
            print(json.dumps(MessageToDict(client.model_info(), preserving_proto_field_name=True), indent=2,
                             ensure_ascii=False))
            return 0
        if args.file and not args.texts and (args.out or Path(args.file).suffix.lower() in (".html", ".docx")):
            return translate_file(client, args)
        return translate(client, args)
    except grpc.RpcError as e:
        print(f"seq2seq-client: {describe(e, args.server)}", file=sys.stderr)
        return 1
    except (OSError, UnicodeError, DocumentError) as e:  # an unreadable --file, --tls-ca or stdin
        print(f"seq2seq-client: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # an option protobuf cannot hold (e.g. a negative --beam-size)
        print(f"seq2seq-client: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if client is not None:
            client.close()


def translate(client: TranslatorClient, args) -> int:
    if args.texts:
        texts = args.texts
    else:
        with (open(args.file, encoding="utf-8") if args.file else sys.stdin) as f:
            texts = [line.rstrip("\n") for line in f]
    options = decode_options_from_args(args)
    real = [i for i, t in enumerate(texts) if t.strip()]  # blank lines pass through as blank lines
    out = Printer(texts, args.json)
    want_attention = bool(args.attention or args.attention_html)
    call = dict(options=options, return_scores=args.scores, return_attention=want_attention,
                split_sentences=False if args.no_split else None)
    for start in range(0, len(real), CHUNK):
        chunk = real[start:start + CHUNK]
        if args.stream:
            for reply in client.translate_stream([texts[i] for i in chunk], **call):
                out.add(chunk[reply.index], reply.result)
        else:
            for i, result in zip(chunk, client.translate([texts[i] for i in chunk], **call).results):
                out.add(i, result)
    out.add(len(texts), None)  # trailing blank lines
    if want_attention and out.first is not None:
        draw_attention(out.first[1], args)
    return 0


def translate_file(client: TranslatorClient, args) -> int:
    """--file IN [--out OUT]: the whole document through TranslateStream requests of at most the server's
    max_texts, two at a time (so that its running batch stays full: see documents.Job), with a progress bar of its
    texts on stderr."""
    path = Path(args.file)
    document = open_document(path.name, path.read_bytes())
    limits = client.model_info().limits
    bar = tqdm(desc=path.name, unit="text", file=sys.stderr, disable=None)  # None: off when stderr is no terminal
    job = Job(document, limits.max_texts or CHUNK, limits.max_chars or 5000, on_progress=lambda *_: bar.update())
    bar.reset(total=job.total)
    options = decode_options_from_args(args)
    try:
        translate_in_threads(job, lambda texts: client.translate_stream(
            texts, options=options, return_attention=job.attention, split_sentences=False if args.no_split else None))
    finally:
        bar.close()
    out = Path(args.out) if args.out else path.with_name(translated_name(path.name))
    out.write_bytes(job.render())
    print(f"seq2seq-client: wrote {out}", file=sys.stderr)
    return 0


def draw_attention(result, args) -> None:
    """The attention of the first text's first sentence (best hypothesis), as PNG and/or HTML."""
    from .attention_view import write_html, write_png

    sentence = result.sentences[0]
    attention = MessageToDict(sentence.hypotheses[0].attention, preserving_proto_field_name=True)
    if args.attention:
        write_png(attention, args.attention, layer=args.layer, head=args.head, kind=args.kind)
    if args.attention_html:
        write_html(attention, args.attention_html, title=f"{sentence.source} → {sentence.hypotheses[0].text}")


class Printer:
    """Prints results in input order as soon as every earlier one is out (streams arrive in completion order)."""

    def __init__(self, texts: list[str], as_json: bool):
        self.texts, self.as_json, self.next, self.ready = texts, as_json, 0, {}
        self.first = None  # (index, result) of the first text

    def add(self, i: int, result) -> None:
        self.ready[i] = result
        if result is not None and (self.first is None or i < self.first[0]):
            self.first = (i, result)
        while self.next < len(self.texts) and (self.next in self.ready or not self.texts[self.next].strip()):
            result = self.ready.pop(self.next, None)
            if self.as_json:
                fields = MessageToDict(result, preserving_proto_field_name=True) if result is not None else {}
                print(json.dumps({"index": self.next, "text": "", **fields}, ensure_ascii=False), flush=True)
            else:
                print(result.text if result is not None else "", flush=True)
            self.next += 1


def describe(error: grpc.RpcError, server: str) -> str:
    code, details = error.code(), error.details()
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach a serving translator at {server} (UNAVAILABLE: {details})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the deadline passed before {server} answered (DEADLINE_EXCEEDED)"
    return f"{code.name}: {details}"


if __name__ == "__main__":
    sys.exit(main())
