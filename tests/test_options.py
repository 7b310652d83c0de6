"""One source for decoding options (DecodeConfig's fields), errors that tell the truth, and commands that answer bad
input with one line.

- The proto's DecodingOptions and DecodeConfig have the same fields, name for name, with matching types.
- Every range check lives in DecodeConfig: the boundaries are accepted, one step beyond is refused with the range.
- The flags of seq2seq-translate / seq2seq-eval / seq2seq-client are made from the fields.
- Over gRPC, only input errors are INVALID_ARGUMENT: a ValueError from inside decoding is INTERNAL, logged with
  its traceback under an id that the client's message carries, and the message shows nothing of the error.
- Each command, given a bad option value, a missing or corrupt model or a missing file: one line on stderr, a
  non-zero exit, no traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from seq2seq_client import TranslatorClient
from seq2seq_client.cli import build_parser as client_parser
from seq2seq_api.translation.v1 import translator_pb2 as pb
from seq2seq.config import ConfigError, DecodeConfig, describe_range, field_kind
from seq2seq.options import add_decode_flags, decode_config_from_args
from seq2seq.translator import InputError, Translator
from server import convert
from server.app import Server
from server.config import ServerConfig

ROOT = Path(__file__).resolve().parent.parent
FIELDS = dataclasses.fields(DecodeConfig)
PROTO_KIND = {"TYPE_UINT32": int, "TYPE_UINT64": int, "TYPE_FLOAT": float, "TYPE_BOOL": bool}


# ---- one source -----------------------------------------------------------------------------------------------------

def test_proto_decoding_options_and_decode_config_have_the_same_fields_name_for_name():
    proto = pb.DecodingOptions.DESCRIPTOR.fields
    assert [f.name for f in proto] == [f.name for f in FIELDS]
    from google.protobuf.descriptor import FieldDescriptor

    type_names = {v: k for k, v in vars(FieldDescriptor).items() if k.startswith("TYPE_")}
    for p, f in zip(proto, FIELDS):
        if f.name == "glossary":  # the one option that is a list: repeated GlossaryTerm {source, target}
            assert p.is_repeated and p.message_type.name == "GlossaryTerm"
            assert [t.name for t in p.message_type.fields] == ["source", "target"]
            continue
        expected = {"int": int, "int | None": int, "float": float, "bool": bool}[str(f.type)]
        assert PROTO_KIND[type_names[p.type]] is expected, f.name
        assert p.has_presence, f"{f.name} must be proto3 optional: unset means DecodeConfig's default"


def test_every_option_has_a_help_text_and_every_number_a_range():
    for f in FIELDS:
        assert len(f.metadata["help"]) > 10, f.name
        if field_kind(f) in (int, float):
            assert describe_range(f), f"{f.name} has no range"


@pytest.mark.parametrize("field", [f for f in FIELDS if field_kind(f) in (int, float)], ids=lambda f: f.name)
def test_bounds_are_accepted_and_one_step_beyond_is_refused_with_the_range(field):
    m, step = field.metadata, (1 if str(field.type).startswith("int") else 1e-6)
    low = m["ge"] if m["ge"] is not None else m["gt"]
    if m["ge"] is not None:
        assert getattr(DecodeConfig(**{field.name: m["ge"]}), field.name) == m["ge"]
    if low is not None:
        too_low = low - step if m["ge"] is not None else low
        with pytest.raises(ConfigError, match=rf"^{field.name} must be {re.escape(describe_range(field))}, got "):
            DecodeConfig(**{field.name: too_low})
    if m["le"] is not None:
        assert getattr(DecodeConfig(**{field.name: m["le"]}), field.name) == m["le"]
        with pytest.raises(ConfigError, match=rf"^{field.name} must be {re.escape(describe_range(field))}, got "):
            DecodeConfig(**{field.name: m["le"] + step})


@pytest.mark.parametrize("name", [f.name for f in FIELDS if str(f.type) == "float"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_float_option_must_be_finite(name, value):
    with pytest.raises(ConfigError, match=rf"^{name} must be a finite number, got {value}$"):
        DecodeConfig(**{name: value})


def test_wrong_types_are_config_errors_not_crashes_later():
    with pytest.raises(ConfigError, match="beam_size must be an integer, got 2.5"):
        DecodeConfig(beam_size=2.5)
    with pytest.raises(ConfigError, match="sample must be true or false, got 1"):
        DecodeConfig(sample=1)
    with pytest.raises(ConfigError, match=r"n_best \(3\) must be <= num_samples \(2\)"):
        DecodeConfig(sample=True, num_samples=2, n_best=3)


def test_translate_flags_are_made_from_the_fields_with_their_defaults():
    p = argparse.ArgumentParser()
    add_decode_flags(p)
    assert decode_config_from_args(p.parse_args([])) == DecodeConfig()
    flags = {a.dest: a for a in p._actions if a.dest != "help"}
    assert list(flags) == [f.name for f in FIELDS]
    for f in FIELDS:
        assert flags[f.name].option_strings == ["--" + f.name.replace("_", "-")]
        assert f.metadata["help"] in flags[f.name].help
    args = p.parse_args(["--sample", "--num-samples", "3", "--n-best", "2", "--seed", "9", "--top-p", "0.5"])
    assert decode_config_from_args(args) == DecodeConfig(sample=True, num_samples=3, n_best=2, seed=9, top_p=0.5)


def test_client_flags_are_the_same_fields_and_send_only_what_was_given():
    p = client_parser()
    names = {a.dest for a in p._actions}
    assert {f.name for f in FIELDS} <= names
    args = p.parse_args(["--beam-size", "2", "--sample", "x"])
    assert all(getattr(args, f.name) is None for f in FIELDS if f.name not in ("beam_size", "sample"))
    from seq2seq.options import decode_options_from_args

    assert decode_options_from_args(args) == {"beam_size": 2, "sample": True}


def test_proto_conversion_round_trips_every_field():
    config = DecodeConfig(beam_size=3, length_penalty=1.0, n_best=2, max_len_a=2.0, max_len_b=7, min_len=1,
                          sample=True, temperature=0.5, top_k=5, top_p=0.5, num_samples=3, seed=11,
                          no_repeat_ngram_size=2, repetition_penalty=1.5)  # values exact in float32
    options = convert.decoding_options(config)
    assert convert.decode_config(options, ServerConfig()) == config
    assert convert.decode_config(pb.DecodingOptions(), ServerConfig()) == DecodeConfig()
    with_terms = DecodeConfig(beam_size=2, length_penalty=0.5, glossary=[["carte mère", "motherboard"], ["vélo", "bike"]])
    options = convert.decoding_options(with_terms)
    assert [(t.source, t.target) for t in options.glossary] == [("carte mère", "motherboard"), ("vélo", "bike")]
    assert convert.decode_config(options, ServerConfig()) == with_terms


def test_the_server_limits_the_glossary_and_the_flag_reads_a_tsv_file(tmp_path):
    options = pb.DecodingOptions(glossary=[pb.GlossaryTerm(source=f"mot{i}", target="w") for i in range(3)])
    assert len(convert.decode_config(options, ServerConfig(max_glossary_terms=3)).glossary) == 3
    with pytest.raises(ConfigError, match="the glossary has 3 terms; this server takes at most 2"):
        convert.decode_config(options, ServerConfig(max_glossary_terms=2))
    p = argparse.ArgumentParser()
    add_decode_flags(p)
    (tmp_path / "terms.tsv").write_text("# ours\ncarte mère\tmotherboard\n", encoding="utf-8")
    args = p.parse_args(["--glossary", str(tmp_path / "terms.tsv")])
    assert decode_config_from_args(args).glossary == (("carte mère", "motherboard"),)


# ---- errors that tell the truth -------------------------------------------------------------------------------------

class Faulty(Translator):
    """A Translator whose work on a decoded sentence fails the way a bug in torch or in our code would, for chosen
    texts (in the engine's thread, as every failure of a request's decoding does)."""

    def detokenize(self, src, hyps):
        if self.tokenizer.encode("ka")[0] in src:
            raise ValueError("shape mismatch in some_internal_function at /secret/path.py")
        if self.tokenizer.encode("da")[0] in src:
            raise InputError("this sentence is over a limit")
        return super().detokenize(src, hyps)


def test_only_input_errors_are_invalid_argument_and_a_bug_is_internal_and_logged(copy_model, caplog):
    translator = Faulty.from_checkpoint(copy_model / "best.pt", device="cpu", max_input_tokens=40)
    config = ServerConfig(host="127.0.0.1", port=0, metrics_port=-1, max_queue=10, workers=16)
    server = Server(config, translator).start()
    assert server.wait_ready(30), server.load_error
    try:
        with TranslatorClient(f"127.0.0.1:{server.port}", timeout=30) as c, caplog.at_level(logging.ERROR, "server"):
            assert c.translate(["ba ce"]).results[0].text  # the server works
            with pytest.raises(grpc.RpcError) as bug:
                c.translate(["ka ka"])
            with pytest.raises(grpc.RpcError) as rejected:
                c.translate(["da da"])
            with pytest.raises(grpc.RpcError) as stream_bug:
                list(c.translate_stream(["ka"]))
            assert c.translate(["ba ce"]).results[0].text  # and still works
    finally:
        server.stop(grace=0)
    assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rejected.value.details() == "this sentence is over a limit"
    for error in (bug.value, stream_bug.value):
        assert error.code() == grpc.StatusCode.INTERNAL
        assert re.fullmatch(r"internal error [0-9a-f]{12}: the server logged it", error.details()), error.details()
        assert "secret" not in error.details() and "ValueError" not in error.details()
    logged = [r for r in caplog.records if r.getMessage().startswith("internal error in")]
    assert len(logged) == 2 and all(r.exc_info and r.exc_info[0] is ValueError for r in logged)
    assert [r.error_id for r in logged] == [e.details().split()[2].rstrip(":") for e in (bug.value, stream_bug.value)]


# ---- commands: bad input is one line, a non-zero exit, no traceback -------------------------------------------------

def run_main(main, argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def corrupt_model(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("corrupt")
    (root / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 10)
    shipped = ROOT / "models" / "fr-en-small"
    directory = root / "model"
    directory.mkdir()
    for name in ("spm.model", "config.json"):
        (directory / name).write_bytes((shipped / name).read_bytes())
    (directory / "model.safetensors").write_bytes(b"garbage")
    return {"file": str(root / "garbage.pt"), "dir": str(directory), "missing": str(root / "nope.pt")}


def commands():
    from seq2seq.evaluate import main as evaluate
    from seq2seq.export import main as export
    from seq2seq.train import main as train
    from seq2seq.translate import main as translate
    from seq2seq_client.cli import main as client
    from server.__main__ import main as serve

    return {"translate": translate, "eval": evaluate, "export": export, "train": train, "client": client,
            "serve": serve}


BAD = [
    ("translate", ["--max-len-a", "inf"], "max_len_a must be a finite number, got inf"),
    ("translate", ["--temperature", "nan", "--sample"], "temperature must be a finite number, got nan"),
    ("translate", ["--beam-size", "0"], "beam_size must be >= 1, got 0"),
    ("translate", ["--beam-size", "two"], "argument --beam-size: invalid int value: 'two'"),
    ("translate", ["--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
    ("translate", ["--model", "{missing}"], "checkpoint not found"),
    ("translate", ["--model", "{file}"], "corrupt or unreadable checkpoint"),
    ("translate", ["--model", "{dir}"], "corrupt or unreadable model file {dir}/model.safetensors"),
    ("translate", ["--device", "tpu"], "unknown device 'tpu'"),
    ("eval", ["--data", "{missing}"], "missing file"),
    ("eval", ["--src", "{missing}", "--ref", "{missing}"], "No such file or directory"),
    ("eval", [], "give either --data or both --src and --ref"),
    ("eval", ["--model", "{file}", "--data", "x"], "corrupt or unreadable checkpoint"),
    ("eval", ["--n-best", "5", "--data", "x"], "n_best (5) must be <= beam_size (4)"),
    ("export", ["--model", "{missing}", "--out", "{missing}.d"], "checkpoint not found"),
    ("export", ["--format", "onnx", "--out", "x"], "argument --format: invalid choice: 'onnx'"),
    ("train", ["--config", "{missing}", "--out", "{missing}.d"], "config file not found"),
    ("train", ["--out", "{missing}.d", "--max-steps", "many"], "argument --max-steps: invalid int value"),
    ("client", ["--top-p", "x", "a"], "argument --top-p: invalid float value: 'x'"),
    ("client", ["--file", "{missing}"], "No such file or directory"),
    ("serve", ["--port", "http"], "argument --port: invalid int value: 'http'"),
    ("serve", ["--precision", "fp4"], "precision must be one of auto, fp32, bf16, fp16, int8, got 'fp4'"),
    ("serve", ["--workers", "8", "--max-queue", "8"], "workers (8) must be > max_queue (8)"),
]


@pytest.mark.parametrize("command, argv, message", BAD, ids=[f"{c}:{' '.join(a)}" for c, a, _ in BAD])
def test_a_bad_input_to_a_command_is_one_line_and_a_non_zero_exit(command, argv, message, corrupt_model, capsys,
                                                                  monkeypatch):
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("Bonjour.\n"))
    argv = [a.format(**corrupt_model) for a in argv]
    if command == "client":
        argv += ["--server", "127.0.0.1:1", "--timeout", "2"]
    code, err = run_main(commands()[command], argv, capsys)
    assert code not in (0, None), err
    assert err.count("\n") == 1 and err.startswith(f"seq2seq-{command}: "), err
    assert message.format(**corrupt_model) in err and "Traceback" not in err


def test_translate_with_an_infinite_max_len_a_in_a_real_process_is_one_line():
    """The case from the issue, as a user runs it: before, an OverflowError traceback."""
    r = subprocess.run([sys.executable, "-m", "seq2seq.translate", "--max-len-a", "inf"], input="Bonjour.\n",
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("seq2seq-translate: error: argument --max-len-a: max_len_a must be a finite number, got inf "
                        "(see --help)\n")



def test_text_logs_carry_the_traceback_of_an_internal_error():
    """`--log-format text` must show what the client's INTERNAL message points to (JSON logs put it in "error")."""
    from seq2seq_api.logs import JsonFormatter, TextFormatter

    try:
        raise ValueError("shape mismatch")
    except ValueError:
        record = logging.getLogger("server").makeRecord("server", logging.ERROR, __file__, 1, "internal error in %s",
                                                        ("Translate",), sys.exc_info(), extra={"error_id": "abc"})
    text = TextFormatter().format(record)
    assert text.splitlines()[0].endswith("ERROR internal error in Translate error_id=abc")
    assert "Traceback" in text and text.rstrip().endswith("ValueError: shape mismatch")
    assert "ValueError: shape mismatch" in __import__("json").loads(JsonFormatter().format(record))["error"]
