"""The per-request glossary (issue 25): reading and checking terms, matching them in French, the constrained beam
search that enforces them (against the scripted model of test_decoding and a random tiny Transformer), the shipped
model with terms it would never write unprompted, and every bad glossary as an input error.
"""
from __future__ import annotations

import math

import pytest
import torch

from seq2seq.config import ConfigError, DecodeConfig, ModelConfig
from seq2seq.decoding import decode
from seq2seq.decoding.lexical import Progress
from seq2seq.model import Transformer
from seq2seq.translator import InputError, Translator
from seq2seq_api.glossary import GlossaryError, MAX_TERM_CHARS, MAX_TERMS, check, matches, parse_any, parse_tsv
from test_decoding import EOS, ScriptedModel, V, run, sources
from test_shipped_model import MODEL

# ---- terms: reading, checking, matching ------------------------------------------------------------------------


@pytest.mark.parametrize("pairs, message", [
    ([["carte mère", ""]], "entry 0 has an empty English term"),
    ([["  ", "x"]], "entry 0 has an empty French term"),
    ([["a" * (MAX_TERM_CHARS + 1), "b"]], f"the French term has {MAX_TERM_CHARS + 1} characters"),
    ([[f"mot{i}", "w"] for i in range(MAX_TERMS + 1)], f"more than {MAX_TERMS} terms"),
    ([["vélo", "bike"], ["VÉLO", "bicycle"]], "the French term 'VÉLO' has two English terms, 'bike' and 'bicycle'"),
    ([["vélo"]], "entry 0 must be two strings"),
    ("vélo", "a glossary is a list of [French, English] term pairs"),
])
def test_bad_glossaries_are_config_errors_that_name_the_term(pairs, message):
    with pytest.raises(GlossaryError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check(pairs)
    with pytest.raises(ConfigError, match="term|glossary"):  # the same through DecodeConfig: INVALID_ARGUMENT, 400
        DecodeConfig(glossary=pairs)


def test_a_pair_given_twice_counts_once_and_spaces_are_not_part_of_a_term():
    assert check([[" carte  mère ", "motherboard"], ["Carte Mère", "motherboard"]]) == (("carte mère", "motherboard"),)


def test_terms_match_whole_words_in_any_case_after_nfkc():
    g = check([["carte mère", "motherboard"], ["carte", "card"], ["vélo", "bike"]])
    assert matches(g, "La CARTE\u00a0Mère est cassée.") == [("carte mère", "motherboard")]  # no-break space: NFKC
    assert matches(g, "La carte mère et la carte.") == [("carte mère", "motherboard"), ("carte", "card")]
    assert matches(g, "Les cartes mères, les vélos.") == []  # not whole words
    assert matches(g, "Un vélo.") == [("vélo", "bike")]


def test_glossary_files_and_web_forms():
    assert parse_tsv("# terms\ncarte mère\tmotherboard\n\nvélo\tbike\n") == (("carte mère", "motherboard"),
                                                                             ("vélo", "bike"))
    with pytest.raises(GlossaryError, match="line 2: expected French<TAB>English, got 3"):
        parse_tsv("a\tb\na\tb\tc\n")
    assert parse_any('{"vélo": "bike"}') == parse_any('[["vélo", "bike"]]') == parse_any("vélo\tbike") == (
        ("vélo", "bike"),)
    with pytest.raises(GlossaryError, match="not valid JSON"):
        parse_any('[["vélo", "bike"]')


def test_sampling_with_a_glossary_is_refused():
    with pytest.raises(ConfigError, match="sampling cannot promise its terms"):
        DecodeConfig(sample=True, glossary=[["vélo", "bike"]])


def test_progress_through_constraints_restarts_a_half_written_one():
    cons = ((5, 6), (7,))
    p = Progress().advance(cons, 5)
    assert (p.current, p.bank(cons), p.next_tokens(cons)) == ((0, 1), 1, {6})
    p = p.advance(cons, 7)  # left (5, 6) half-written, and 7 is a whole constraint
    assert (p.met, p.current, p.bank(cons), p.ended) == ({1}, None, 1, True)
    p = p.advance(cons, 5).advance(cons, 6)
    assert (p.met, p.bank(cons), p.ended) == ({0, 1}, 3, True)


# ---- the constrained search -----------------------------------------------------------------------------------------

C, D = 3, 4  # tokens the scripted model almost never writes
RARE = {"default": [0.3, 0.4, 0.3 - 2e-6, 1e-6, 1e-6, 0],  # </s>, a, b, c, d, <pad>
        (C,): [0.6, 0.2, 0.2 - 2e-6, 1e-6, 1e-6, 0]}  # after c, the end is likely


def contains(ids: tuple[int, ...], seq: tuple[int, ...]) -> bool:
    return any(ids[i:i + len(seq)] == seq for i in range(len(ids) - len(seq) + 1))


def test_a_token_the_model_never_writes_unprompted_appears_where_it_costs_least():
    config = DecodeConfig(beam_size=2, n_best=2, length_penalty=0.0, max_len_a=0, max_len_b=4)
    [[plain, _]] = run(ScriptedModel(RARE), config)
    assert plain.ids == ()  # alone, the model stops at once
    [hyps] = run(ScriptedModel(RARE), config, constraints=[[(C,)]])
    assert hyps[0].ids == (C,)  # the term, then the end: the most probable output that holds it
    assert hyps[0].score == pytest.approx(math.log(1e-6 * 0.6), abs=1e-5)
    assert all(contains(h.ids, (C,)) for h in hyps) and len(hyps) == 2


@pytest.mark.parametrize("beam_size", [1, 2, 4])
def test_multi_token_and_two_terms_hold_in_every_hypothesis_of_the_n_best(beam_size):
    config = DecodeConfig(beam_size=beam_size, n_best=beam_size, length_penalty=0.6, max_len_a=0, max_len_b=6)
    for constraints in ([(C, D, C)], [(C,), (D, D)]):
        [hyps] = run(ScriptedModel(RARE), config, constraints=[constraints])
        assert len(hyps) >= 1
        for h in hyps:
            assert all(contains(h.ids, c) for c in constraints), (constraints, h.ids)
            assert sum(h.token_log_probs) / ((5 + len(h.token_log_probs)) / 6) ** 0.6 == pytest.approx(h.score)


def test_terms_fill_the_whole_length_limit_when_they_must():
    config = DecodeConfig(beam_size=2, length_penalty=0.0, max_len_a=0, max_len_b=3)
    [[hyp]] = run(ScriptedModel(RARE), config, constraints=[[(C, D), (D,)]])
    assert sorted([hyp.ids]) in ([(C, D, D)], [(D, C, D)])


@pytest.fixture(scope="module")
def tiny() -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig.tiny(V)).eval()
    with torch.no_grad():
        model.decoder[-1].sub_ffn.norm.bias.copy_(3 * model.embed.tokens.weight[EOS])
    return model


@pytest.mark.parametrize("beam_size", [1, 4])
def test_a_sentence_without_terms_is_unchanged_bit_for_bit_beside_one_with_terms(tiny, beam_size):
    src, mask = sources()
    config = DecodeConfig(beam_size=beam_size, n_best=beam_size, max_len_b=8)
    plain = decode(tiny, src, mask, config)
    mixed = decode(tiny, src, mask, config, constraints=[[(5, 6)], [], [(7,), (9, 10, 11)]])
    for i, constraints in ((0, [(5, 6)]), (2, [(7,), (9, 10, 11)])):
        assert all(all(contains(h.ids, c) for c in constraints) for h in mixed[i])
    assert [(h.ids, h.score, h.token_log_probs) for h in mixed[1]] == \
        [(h.ids, h.score, h.token_log_probs) for h in plain[1]]


# ---- the shipped model ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped() -> Translator:
    if not MODEL.is_dir():
        pytest.skip(f"no shipped model at {MODEL}")
    torch.set_num_threads(1)
    return Translator.from_checkpoint(MODEL, device="cpu", precision="fp32")


TERMS = [["carte mère", "motherboard"], ["vélo", "bike"], ["Bonjour", "Hello"], ["rue", "road"]]


def test_the_shipped_model_writes_terms_it_never_writes_unprompted(shipped):
    texts = ["La carte mère de mon ordinateur est cassée.", "Bonjour, un homme fait du vélo dans la rue"]
    plain = [t.text for t in shipped.translate(texts)]
    assert not any(w in plain[0] for w in ("motherboard", "Hello")) and "Hello" not in plain[1]
    for config in (DecodeConfig(glossary=TERMS), DecodeConfig(glossary=TERMS, n_best=4),
                   DecodeConfig(glossary=TERMS, beam_size=1)):
        first, second = shipped.translate(texts, config)
        for t in (first, *first.alternatives):
            assert "motherboard" in t.text and "Hello" not in t.text
        for t in (second, *second.alternatives):  # a term at the very start and one at the very end
            assert all(w in t.text for w in ("Hello", "bike", "road")), t.text
        if config.beam_size == 4:
            assert second.text.startswith("Hello") and second.text.rstrip(".").endswith("road")
    # the first word after a term does not glue onto it ("road" never becomes "roads")
    assert "roads" not in shipped.translate(["Les rues de la ville."], DecodeConfig(glossary=TERMS))[0].text


def test_terms_absent_from_a_sentence_change_nothing(shipped):
    texts = ["Un homme avec un chapeau orange regardant quelque chose.", "Un chien court dans l'herbe."]
    plain = shipped.translate(texts, DecodeConfig(n_best=2))
    with_terms = shipped.translate(texts, DecodeConfig(n_best=2, glossary=TERMS))
    assert [(t.text, t.score, [a.text for a in t.alternatives]) for t in with_terms] == \
        [(t.text, t.score, [a.text for a in t.alternatives]) for t in plain]


@pytest.mark.parametrize("terms, config, message", [
    ([["ordinateur", "日本"]], {}, "cannot be written exactly by this model's vocabulary"),
    ([["ordinateur", "ﬁne"]], {}, "cannot be written exactly"),  # NFKC would write "fine"
    ([["mon", "a b c d e f g h"], ["ordinateur", "i j k l"]], dict(max_len_a=0.0, max_len_b=10),
     r"need \d+ tokens, more than the 10 its translation may have"),
])
def test_terms_the_model_cannot_write_or_fit_are_input_errors(shipped, terms, config, message):
    with pytest.raises(InputError, match=message):
        shipped.translate(["Mon ordinateur est cassé."], DecodeConfig(glossary=terms, **config))
    shipped.translate(["Un chat."], DecodeConfig(glossary=terms, **config))  # no term in it: nothing to refuse


# ---- through the server and the LibreTranslate API --------------------------------------------------------------

@pytest.fixture(scope="module")
def server(copy_model):
    from dataclasses import replace

    from server.app import Server
    from test_server import CONFIG

    translator = Translator.from_checkpoint(copy_model / "best.pt", device="cpu", max_input_tokens=40)
    server = Server(replace(CONFIG, max_glossary_terms=2), translator).start()
    assert server.wait_ready(30), server.load_error
    yield server
    server.stop(grace=0)


def test_grpc_requests_get_their_terms_and_bad_glossaries_are_invalid_argument(server):
    import grpc

    from seq2seq_client import TranslatorClient

    with TranslatorClient(f"127.0.0.1:{server.port}", timeout=60) as client:
        plain = client.translate(["ba ce di", "fo ga"]).results
        reply = client.translate(["ba ce di", "fo ga"], {"glossary": [("ce", "ka ku")]}).results
        assert "ka ku" in reply[0].text and "ka ku" not in plain[0].text  # the copy model writes what it reads
        assert reply[1].text == plain[1].text  # no term in it
        for options, message in [({"glossary": [("ce", "ka"), ("di", "ku"), ("ba", "fo")]}, "at most 2"),
                                 ({"glossary": [("ce", "")]}, "empty English term"),
                                 ({"glossary": [("ce", "ka"), ("CE", "ku")]}, "two English terms"),
                                 ({"glossary": [("ce", "ka")], "sample": True}, "sampling cannot promise"),
                                 ({"glossary": [("ce", "日本")]}, "cannot be written exactly"),
                                 ({"glossary": [("ce", "ka ku fo ga ba ce di")], "max_len_a": 0.0, "max_len_b": 3},
                                  "more than the 3 its translation may have")]:
            with pytest.raises(grpc.RpcError) as e:
                client.translate(["ba ce di"], options)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details(), options


def test_libretranslate_takes_a_glossary_in_the_body_or_the_query_string():
    from test_web import FakeTranslator, gateway, in_loop, post

    @in_loop
    async def scenario():
        fake = FakeTranslator()
        async with gateway(fake) as rig:
            for kwargs in (dict(json={"q": "La carte mère.", "source": "fr", "target": "en",
                                      "glossary": [["carte mère", "motherboard"]]}),
                           dict(json={"q": "La carte mère.", "source": "fr", "target": "en",
                                      "glossary": {"carte mère": "motherboard"}}),
                           dict(params={"q": "La carte mère.", "source": "fr", "target": "en",
                                        "glossary": "carte mère\tmotherboard"}),
                           dict(data={"q": "La carte mère.", "source": "fr", "target": "en",
                                      "glossary": '[["carte mère", "motherboard"]]'})):
                status, body = await post(rig, "/translate", **kwargs)
                assert status == 200 and body["translatedText"] == "en:La carte mère."
                terms = fake.requests[-1].options.glossary
                assert [(t.source, t.target) for t in terms] == [("carte mère", "motherboard")], kwargs
            status, body = await post(rig, "/translate", json={"q": "x", "source": "fr", "target": "en"})
            assert status == 200 and len(fake.requests[-1].options.glossary) == 0  # clients that send none
            status, body = await post(rig, "/translate", json={"q": "x", "source": "fr", "target": "en",
                                                               "glossary": [["carte mère", ""]]})
            assert (status, body) == (400, {"error": "Invalid request: glossary entry 0 has an empty English term"})

    scenario()
