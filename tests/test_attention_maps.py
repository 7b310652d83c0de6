"""Attention maps of a translation (seq2seq.attention_maps) and their views (seq2seq_client.attention_view): the weights are
distributions with the causal mask in place, the word alignment follows the cross-attention, the PNG is a PNG and
the HTML viewer is self-contained and reacts to a hover in headless Chromium."""
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seq2seq_client.attention_view import select_map, write_html, write_png
from seq2seq import DecodeConfig, ModelConfig, Transformer, Translator
from seq2seq.attention_maps import align_words, group_words
from seq2seq.tokenizer import Tokenizer

from conftest import WORDS, alphas

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# long enough to have sentences of several words, short enough to keep every map small
DECODE = DecodeConfig(beam_size=2, n_best=2, min_len=4, max_len_a=0.0, max_len_b=7)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    rng = random.Random(3)
    return Tokenizer.train((" ".join(rng.choices(WORDS, k=rng.randint(2, 6))) for _ in range(500)), vocab_size=40)


def make_translator(tokenizer: Tokenizer, precision: str) -> Translator:
    """An untrained model: its maps are diffuse, but they are distributions all the same."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_heads=2, n_layers=2, n_decoder_layers=3,
                         d_ff=64, dropout=0.0)
    return Translator(Transformer(config), tokenizer, device="cpu", precision=precision)


@pytest.fixture(scope="module", params=["fp32", "bf16", "int8"])
def translator(request, tokenizer) -> Translator:
    return make_translator(tokenizer, request.param)


@pytest.fixture(scope="module")
def maps_dict(tokenizer) -> dict:
    translator = make_translator(tokenizer, "fp32")
    translation = translator.translate(["ba ce di fo ga"], DECODE)[0]
    return translator.attention_maps(translation).to_dict()


def test_every_row_is_a_distribution_and_the_future_is_masked(translator):
    translation = translator.translate(["ba ce di fo ga"], DECODE)[0]
    maps = translator.attention_maps(translation)
    s, t = len(translation.source_tokens), len(translation.tokens)
    assert maps.source_tokens == translation.source_tokens and maps.target_tokens[-1] == "</s>"
    assert maps.cross.shape == (3, 2, t, s) and maps.cross_average.shape == (t, s)
    assert maps.decoder_self.shape == (3, 2, t, t) and maps.encoder_self.shape == (2, 2, s, s)
    for weights in (maps.cross, maps.decoder_self, maps.encoder_self, maps.cross_average):
        assert weights.dtype == torch.float32 and weights.min() >= 0
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-5, rtol=0)
    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    assert maps.decoder_self[..., future].eq(0).all()  # exactly 0, not merely small
    assert maps.decoder_self[..., ~future].gt(0).all()


def test_cross_average_is_what_decoding_saw_for_every_hypothesis(tokenizer):
    """The teacher-forced pass recomputes the incremental decoder's attention, for the best and the alternatives."""
    translator = make_translator(tokenizer, "fp32")
    best = translator.translate(["ce di fo ga ke"], DECODE, return_attention=True)[0]
    for translation in (best, best.alternatives[0]):
        maps = translator.attention_maps(translation)
        torch.testing.assert_close(maps.cross_average, torch.tensor(translation.attention), atol=1e-5, rtol=0)


def test_words_group_pieces_at_word_starts_with_eos_alone():
    words, word_of = group_words(("▁le", "▁", "ch", "at", "▁noir", ".", "</s>"))
    assert words == ("le", "chat", "noir.", "</s>") and word_of == (0, 1, 1, 1, 2, 2, 3)


def test_alignment_sums_over_source_pieces_and_averages_over_target_pieces():
    # source words: 0 = pieces 0, 1 = pieces 1-2 ("ch" "at"), 2 = "</s>" (piece 3)
    cross = torch.tensor([[0.4, 0.3, 0.3, 0.0],   # target word 0: "chat" (0.6 over two pieces) beats 0.4
                          [0.5, 0.2, 0.2, 0.1],   # target word 1, two pieces: source word 0 gets (0.5 + 0.3) / 2,
                          [0.3, 0.0, 0.1, 0.6],   # "</s>" (0.1 + 0.6) / 2, "chat" (0.4 + 0.1) / 2
                          [0.1, 0.0, 0.0, 0.9]])  # target word 2 attends to </s>: aligned to nothing
    alignment = align_words(cross, (0, 1, 1, 2), (0, 1, 1, 2), source_eos_word=2)
    assert alignment == (1, 0, -1)
    assert align_words(cross, (0, 1, 1, 2), (0, 1, 1, 2), source_eos_word=None) == (1, 0, 2)


def test_alignment_has_one_source_word_per_target_word(maps_dict):
    assert len(maps_dict["alignment"]) == len(maps_dict["target_words"]) >= 2
    assert all(-1 <= a < len(maps_dict["source_words"]) for a in maps_dict["alignment"])
    assert "".join(maps_dict["source_words"][:-1]) == "bacedifoga" and maps_dict["source_words"][-1] == "</s>"


def test_select_map_defaults_to_cross_average_and_picks_layer_and_head(maps_dict):
    average = select_map(maps_dict)
    assert average.title == "Cross-attention, layer 2, average of 2 heads"
    t, s = len(maps_dict["target_tokens"]), len(maps_dict["source_tokens"])
    assert average.row_tokens == tuple(maps_dict["target_tokens"]) and len(average.weights[0]) == s
    heads = [m for m in maps_dict["cross"] if m["layer"] == 2]
    mean = [sum(w) / 2 for w in zip(heads[0]["weights"], heads[1]["weights"])]
    assert sum(average.weights, []) == pytest.approx(mean, abs=1e-6)
    one = select_map(maps_dict, layer=1, head=0, kind="decoder_self")
    assert one.title == "Decoder self-attention, layer 1, head 0" and len(one.weights) == t
    assert sum(one.weights, []) == maps_dict["decoder_self"][2]["weights"]  # layer-major: layer 1 head 0 is third
    with pytest.raises(ValueError, match=r"layer 5 is not in the cross maps; they have layers \[0, 1, 2\]"):
        select_map(maps_dict, layer=5)


def test_views_read_the_proto_message_as_message_to_dict_writes_it(maps_dict):
    """MessageToDict leaves out zero fields (layer 0, head 0): the views read it all the same."""
    pb = pytest.importorskip("seq2seq_api.translation.v1.translator_pb2")
    from google.protobuf import json_format

    message = json_format.ParseDict(maps_dict, pb.Attention())
    as_dict = json_format.MessageToDict(message, preserving_proto_field_name=True)
    assert "layer" not in as_dict["cross"][0] and as_dict["cross_average"]["head"] == -1
    for kind, layer, head in (("cross", None, None), ("decoder_self", 0, 0), ("encoder_self", 1, 1)):
        a, b = select_map(maps_dict, layer, head, kind), select_map(as_dict, layer, head, kind)
        assert a.title == b.title and sum(a.weights, []) == pytest.approx(sum(b.weights, []), abs=1e-7)


def test_wrong_map_size_is_a_clear_error(maps_dict):
    broken = {**maps_dict, "cross_average": {**maps_dict["cross_average"], "rows": 1}}
    with pytest.raises(ValueError, match=r"attention map layer 2 head -1 is 1×\d+ with \d+ weights"):
        select_map(broken)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def distinct_colours(path: Path) -> int:
    from PIL import Image  # matplotlib's own dependency

    with Image.open(path) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 20) or ())


@pytest.mark.parametrize("layer, head, kind", [(None, None, "cross"), (0, 1, "cross"), (2, 0, "decoder_self")])
def test_png_heatmap(maps_dict, tmp_path, layer, head, kind):
    path = tmp_path / "attention.png"
    write_png(maps_dict, path, layer, head, kind)
    width, height = png_size(path.read_bytes())
    assert width > 200 and height > 200 and distinct_colours(path) > 20


FORBIDDEN = ("http://", "https://", "<script src", "@import", "url(", "<link", "<img", "<iframe", "src=")


def test_html_is_one_self_contained_file(maps_dict, tmp_path):
    path = tmp_path / "attention.html"
    write_html(maps_dict, path, title="ba ce <di> & fo")
    page = path.read_text(encoding="utf-8")
    assert [f for f in FORBIDDEN if f in page.lower()] == []
    assert page.count("</script>") == 2  # the "</s>" tokens did not end the data block early
    assert "<title>ba ce &lt;di&gt; &amp; fo</title>" in page
    start = page.index('id="attention-data">') + len('id="attention-data">')
    data = json.loads(page[start:page.index("</script>", start)])
    assert data["target_tokens"] == maps_dict["target_tokens"]
    assert all(len(data[kind]) == len(maps_dict[kind]) > 0 for kind in ("cross", "decoder_self", "encoder_self"))
    assert sorted({m["layer"] for m in data["cross"]}) == [0, 1, 2] and data["cross_average"]["head"] == -1
    assert data["cross"][1]["weights"] == pytest.approx(maps_dict["cross"][1]["weights"], abs=1e-5)
    assert "AttentionViewer.mount(" in page  # the shared viewer (web/static/attention-viewer.js), inlined


def test_views_need_no_torch(maps_dict, tmp_path):
    """The client runs where torch is absent: a blocked torch import must not matter."""
    (tmp_path / "attention.json").write_text(json.dumps(maps_dict))
    code = ("import json, sys; sys.modules['torch'] = None; from seq2seq_client.attention_view import write_html, write_png;"
            f"d = json.load(open({str(tmp_path / 'attention.json')!r}));"
            f"write_html(d, {str(tmp_path / 'a.html')!r}); write_png(d, {str(tmp_path / 'a.png')!r})")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a.html").stat().st_size > 1000 and png_size((tmp_path / "a.png").read_bytes())


# ---- the viewer in a real browser ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_html_viewer_reacts_to_hover_picker_and_temperature(browser, maps_dict, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    path = tmp_path / "attention.html"
    write_html(maps_dict, path, title="ba ce di fo ga")
    browser.get(path.as_uri())
    keys = lambda: browser.find_elements(By.CSS_SELECTOR, ".av-keys .av-tok")  # noqa: E731
    n_src = len(maps_dict["source_tokens"])

    # 1. Hovering target token 2 lights up the source tokens by its cross_average row, the strongest the most.
    assert alphas(keys()) == [0.0] * n_src
    target = browser.find_element(By.CSS_SELECTOR, '.av-queries .av-tok[data-q="2"]')
    ActionChains(browser).move_to_element(target).perform()
    row = maps_dict["cross_average"]["weights"][2 * n_src:3 * n_src]
    lit = alphas(keys())
    assert lit == pytest.approx(row, abs=3e-3) and lit.index(max(lit)) == row.index(max(row))
    assert "active" in browser.find_element(By.CSS_SELECTOR, '.av-matrix tr[data-q="2"]').get_attribute("class")
    screenshot = tmp_path / "hover.png"
    assert browser.save_screenshot(str(screenshot)) and distinct_colours(screenshot) > 20

    # 2. The decoder self-attention shows its causal mask: T(T-1)/2 hatched cells, unlike the others.
    Select(browser.find_element(By.CSS_SELECTOR, ".av-kind")).select_by_value("decoder_self")
    t = len(maps_dict["target_tokens"])
    masked = browser.find_elements(By.CSS_SELECTOR, ".av-matrix td.masked")
    assert len(masked) == t * (t - 1) // 2
    unmasked = browser.find_element(By.CSS_SELECTOR, '.av-matrix tr[data-q="1"] td:not(.masked)')
    assert "gradient" in masked[0].value_of_css_property("background-image")
    assert unmasked.value_of_css_property("background-image") == "none"

    # 3. A low temperature sharpens every row: the largest weight of row 3 grows (masked cells stay 0).
    cells = lambda: browser.find_elements(By.CSS_SELECTOR, '.av-matrix tr[data-q="3"] td')  # noqa: E731
    before = alphas(cells()[:4])
    browser.execute_script("const s = document.querySelector('.av-temperature'); s.value = -60;"
                           "s.dispatchEvent(new Event('input'));")
    after = alphas(cells()[:4])
    assert max(after) > max(before) and sum(after) == pytest.approx(1.0, abs=1e-2)
    assert browser.find_element(By.CSS_SELECTOR, ".av-temperature-value").text == "0.25"

    # 4. Nothing was fetched and no script failed.
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
