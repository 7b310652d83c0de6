"""HTML translation (seq2seq_client.web.html_format): which texts go to the translator, and the exact document that
comes back from hand-made results whose alignments are chosen in each test, including LibreTranslate's #806 (nested
tags over several lines) and #288 (a paragraph wrapped over several lines), and random nestings of inline tags."""
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seq2seq_client.web.html_format import VOID, HtmlTranslation


def sentence(source: str, target: str, alignment: list[int]) -> dict:
    """A SentenceResult as MessageToDict gives it: words split at spaces (SentencePiece's word starts), </s> last,
    alignment[j] = the source word of target word j."""
    return {"source": source, "hypotheses": [{"text": target, "attention": {
        "source_words": [*source.split(), "</s>"], "target_words": [*target.split(), "</s>"],
        "alignment": [*alignment, -1]}}]}


def result(*sentences: dict) -> dict:
    """A TextResult: its text is the sentences' best hypotheses joined by a space, as the server joins a line."""
    return {"text": " ".join(s["hypotheses"][0]["text"] for s in sentences), "sentences": list(sentences)}


def translated(source: str, target: str, alignment: list[int]) -> dict:
    return result(sentence(source, target, alignment))


def test_plain_paragraph():
    doc = HtmlTranslation('<p>Un homme marche.</p>')
    assert doc.texts == ["Un homme marche."]
    assert doc.render([translated("Un homme marche.", "A man walks.", [0, 1, 2])]) == "<p>A man walks.</p>"


def test_two_paragraphs_are_two_texts_and_the_whitespace_between_them_stays():
    doc = HtmlTranslation("<div>\n  <p>Bonjour.</p>\n  <p>Au revoir.</p>\n</div>")
    assert doc.texts == ["Bonjour.", "Au revoir."]
    out = doc.render([translated("Bonjour.", "Hello.", [0]), translated("Au revoir.", "Goodbye.", [1])])
    assert out == "<div>\n  <p>Hello.</p>\n  <p>Goodbye.</p>\n</div>"


def test_br_splits_a_paragraph_and_newlines_around_text_are_kept():
    doc = HtmlTranslation("<p>\n  Un homme<br>\n  Une femme\n</p>")
    assert doc.texts == ["Un homme", "Une femme"]
    out = doc.render([translated("Un homme", "A man", [0, 1]), translated("Une femme", "A woman", [0, 1])])
    assert out == "<p>\n  A man<br>\n  A woman\n</p>"


def test_pre_is_translated_line_by_line_and_keeps_its_line_breaks():
    doc = HtmlTranslation("<pre>Ligne un\n  Ligne deux\n</pre>")
    assert doc.texts == ["Ligne un", "Ligne deux"]
    out = doc.render([translated("Ligne un", "Line one", [0, 1]), translated("Ligne deux", "Line two", [0, 1])])
    assert out == "<pre>Line one\n  Line two\n</pre>"


def test_nested_inline_tags_follow_reordered_words():
    doc = HtmlTranslation("<p>Un <b>homme <i>grand</i></b> marche.</p>")
    assert doc.texts == ["Un homme grand marche."]
    out = doc.render([translated("Un homme grand marche.", "A tall man walks.", [0, 2, 1, 3])])
    assert out == "<p>A <b><i>tall</i> man</b> walks.</p>"


def test_siblings_swap_places_with_their_words():
    doc = HtmlTranslation('<p>Une <b>voiture</b> <i class="c">rouge</i>.</p>')
    out = doc.render([translated("Une voiture rouge.", "A red car.", [0, 2, 1])])
    assert out == '<p>A <i class="c">red</i> <b>car</b>.</p>'


def test_punctuation_stays_outside_a_tag_that_did_not_hold_it():
    doc = HtmlTranslation('<p>Visitez <a href="/">notre site</a>. <b>Merci !</b></p>')
    out = doc.render([result(sentence("Visitez notre site.", "Visit our site.", [0, 1, 2]),
                             sentence("Merci !", "Thanks!", [0]))])
    assert out == '<p>Visit <a href="/">our site</a>. <b>Thanks!</b></p>'


def test_a_tag_whose_words_align_to_nothing_is_kept_empty_next_to_its_neighbour():
    doc = HtmlTranslation('<p>Un <b>très</b> grand homme.</p>')
    out = doc.render([translated("Un très grand homme.", "A tall man.", [0, 2, 3])])
    assert out == "<p>A<b></b> tall man.</p>"  # nearest aligned neighbours "Un" and "grand": the one before wins


def test_without_attention_every_tag_is_still_emitted():
    doc = HtmlTranslation("<p>Un <b>homme <i>grand</i></b> marche.</p>")
    out = doc.render([{"text": "A tall man walks."}])  # MessageToDict leaves out empty fields: no sentences
    assert out == "<p>A tall man walks.<b><i></i></b></p>"
    no_alignment = translated("Un homme grand marche.", "A tall man walks.", [])
    del no_alignment["sentences"][0]["hypotheses"][0]["attention"]["alignment"]
    assert doc.render([no_alignment]) == out


def test_void_tags_and_comments_stay_by_their_word_with_their_spaces():
    doc = HtmlTranslation('<p><img src="a.png"> Merci <!-- note --> beaucoup<wbr>!</p>')
    assert doc.texts == ["Merci beaucoup!"]
    out = doc.render([translated("Merci beaucoup!", "Thank you very much!", [0, 0, 1, 1])])
    assert out == '<p><img src="a.png"> Thank you <!-- note --> very much!<wbr></p>'


def test_attributes_and_entities_are_kept_as_written():
    doc = HtmlTranslation('<p class="x" title=\'Tom &amp; Jerry\'>Tom &amp; Jerry&nbsp;: <a href="/f?id=1&amp;v=2">'
                          'le caf&eacute;</a></p>\n<table><tr><td>&nbsp;</td></tr></table>')
    assert doc.texts == ["Tom & Jerry\xa0: le café"]
    out = doc.render([translated("Tom & Jerry\xa0: le café", "Tom & Jerry: the café", [0, 1, 2, 4, 5])])
    assert out == ('<p class="x" title=\'Tom &amp; Jerry\'>Tom &amp; Jerry: <a href="/f?id=1&amp;v=2">the caf&eacute;'
                   '</a></p>\n<table><tr><td>&nbsp;</td></tr></table>')


def test_code_script_style_and_notranslate_are_untouched_and_not_sent():
    source = ('<head><style>p { color: red; }</style><script>if (a < b) { x = "<p>Bonjour</p>"; }</script></head>\n'
              '<p>Lancez <code>make test</code> puis <span class="notranslate">Le Monde</span> ici.</p>\n'
              '<div translate="no"><p>Ne pas traduire</p></div><textarea>Texte libre</textarea>')
    doc = HtmlTranslation(source)
    assert doc.texts == ["Lancez puis ici."]
    out = doc.render([translated("Lancez puis ici.", "Run then here.", [0, 1, 2])])
    assert out == source.replace(
        '<p>Lancez <code>make test</code> puis <span class="notranslate">Le Monde</span> ici.</p>',
        '<p>Run <code>make test</code> then <span class="notranslate">Le Monde</span> here.</p>')


def test_whitespace_only_segments_are_not_sent_and_come_back_as_written():
    source = "<!DOCTYPE html>\n<ul>\n\t<li> </li>\n\t<li><b>&nbsp;</b></li>\n\t<li>Oui</li>\n</ul>"
    doc = HtmlTranslation(source)
    assert doc.texts == ["Oui"]
    assert doc.render([translated("Oui", "Yes", [0])]) == source.replace("Oui", "Yes")


def test_two_sentences_in_one_text():
    doc = HtmlTranslation("<p>Un homme marche. Une <b>femme</b> rapide court.</p>")
    assert doc.texts == ["Un homme marche. Une femme rapide court."]
    out = doc.render([result(sentence("Un homme marche.", "A man walks.", [0, 1, 2]),
                             sentence("Une femme rapide court.", "A fast woman runs.", [0, 2, 1, 3]))])
    assert out == "<p>A man walks. A fast <b>woman</b> runs.</p>"


def test_words_are_found_by_position_after_nfkc_and_by_search_otherwise():
    doc = HtmlTranslation("<p>Attendez… <b>ici</b></p>")  # SentencePiece's NFKC writes "…" as "..."
    out = doc.render([result({"source": "Attendez… ici", "hypotheses": [{"text": "Wait... here", "attention": {
        "source_words": ["Attendez...", "ici", "</s>"], "target_words": ["Wait...", "here", "</s>"],
        "alignment": [0, 1, -1]}}]})])
    assert out == "<p>Wait... <b>here</b></p>"
    doc = HtmlTranslation("<p>Un <b>homme</b> marche.</p>")  # a word list that is short of one: found by search
    out = doc.render([result({"source": "Un homme marche.", "hypotheses": [{"text": "A man walks.", "attention": {
        "source_words": ["\u2581Un", "\u2581homme", "</s>"], "target_words": ["\u2581A", "\u2581man", "</s>"],
        "alignment": [0, 1, -1]}}]})])
    assert out == "<p>A <b>man</b> walks.</p>"


def test_inline_elements_around_blocks_continue_across_segments():
    doc = HtmlTranslation('<a href="/"><div>Un homme</div><div>Une femme</div></a><p><b>Un homme<br>grand</b></p>')
    assert doc.texts == ["Un homme", "Une femme", "Un homme", "grand"]
    out = doc.render([translated("Un homme", "A man", [0, 1]), translated("Une femme", "A woman", [0, 1]),
                      translated("Un homme", "A man", [0, 1]), translated("grand", "tall", [0])])
    assert out == '<a href="/"><div>A man</div><div>A woman</div></a><p><b>A man<br>tall</b></p>'


def test_libretranslate_806_nested_tags_over_lines_make_one_sentence():
    span = '<span style="text-decoration: underline; color: #ff0000;">'
    doc = HtmlTranslation(f'<a href="#" target="_blank" rel="noopener">\n  <em>\n    {span}\n'
                          '     Voir toute la gamme de\n    </span>\n  </em>\n'
                          f'  <em>\n    {span}\n      systèmes de tiroirs ici !\n    </span>\n  </em>\n</a>')
    assert doc.texts == ["Voir toute la gamme de systèmes de tiroirs ici !"]
    out = doc.render([translated(doc.texts[0], "See the whole range of drawer systems here!",
                                 [0, 2, 1, 3, 4, 7, 5, 8])])
    assert out == (f'<a href="#" target="_blank" rel="noopener"><em>{span}See the whole range of</span></em> '
                   f'<em>{span}drawer systems here!</span></em></a>')


def test_libretranslate_288_a_paragraph_wrapped_over_lines_is_one_text():
    source = ('<html lang="fr">\n\t<head>\n\t</head>\n\t<body>\n\t<p>\n\t\tSi une ligne ne contient\n\t\tpas de '
              'verbe, la traduction\n\t\test fausse.\n\t</p>\n\t</body>\n</html>')
    doc = HtmlTranslation(source)
    french = "Si une ligne ne contient pas de verbe, la traduction est fausse."
    assert doc.texts == [french]
    out = doc.render([translated(french, "If a line contains no verb, the translation is wrong.",
                                 [0, 1, 2, 4, 3, 7, 8, 9, 10, 11])])
    assert out == ('<html lang="fr">\n\t<head>\n\t</head>\n\t<body>\n\t<p>\n\t\tIf a line contains no verb, the '
                   'translation is wrong.\n\t</p>\n\t</body>\n</html>')


def test_one_result_per_text():
    with pytest.raises(ValueError, match="2 texts, 1 results"):
        HtmlTranslation("<p>Un</p><p>Deux</p>").render([translated("Un", "One", [0])])


# ---- random nestings of inline tags: well formed, every tag kept, the whole translation kept -----------------------

WORDS = ["un", "homme", "grand", "marche", "vite,", "ici."]
TAGS = ["b", "i", "em", "span", 'a href="#"', "strong"]
LEAVES = [*WORDS, '<img src="x.png">', "<br>", "<!-- c -->", "<code>x y</code>", "<b></b>"]


def wrap(tag_and_children: tuple[str, list[str]]) -> str:
    tag, children = tag_and_children
    return f"<{tag}>{' '.join(children)}</{tag.split()[0]}>"


inline_html = st.recursive(st.sampled_from(LEAVES),
                           lambda inner: st.tuples(st.sampled_from(TAGS), st.lists(inner, max_size=3)).map(wrap),
                           max_leaves=12)


def fake_translation(text: str, rng) -> dict:
    """Every source word upper-cased, in a shuffled order; a third of them aligned to nothing."""
    words = text.split()
    order = rng.sample(range(len(words)), len(words))
    alignment = [i if rng.random() > 1 / 3 else -1 for i in order]
    return translated(text, " ".join(words[i].upper() for i in order), alignment)


class Balance(HTMLParser):
    """Start tags, end tags and comments as written, whether every end tag closes the innermost open element, and
    the text outside <code> without its whitespace."""

    def __init__(self, html: str):
        super().__init__()
        self.starts, self.ends, self.comments, self.open = [], [], [], []
        self.text = ""
        self.nested = True
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.starts.append(self.get_starttag_text())
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):  # <br/>: no end tag to match
        self.starts.append(self.get_starttag_text())

    def handle_endtag(self, tag):
        self.ends.append(tag)
        self.nested = self.nested and bool(self.open) and self.open.pop() == tag

    def handle_comment(self, data):
        self.comments.append(data)

    def handle_data(self, data):
        if "code" not in self.open:
            self.text += "".join(data.split())


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.lists(inline_html, min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_random_nestings_stay_well_formed_and_keep_every_tag(parts, rng):
    source = f"<p>{' '.join(parts)}</p>"
    doc = HtmlTranslation(source)
    results = [fake_translation(text, rng) for text in doc.texts]
    out = Balance(doc.render(results))
    before = Balance(source)
    assert out.nested and not out.open
    assert sorted(out.starts) == sorted(before.starts) and sorted(out.ends) == sorted(before.ends)
    assert out.comments == before.comments
    assert out.text == "".join("".join(r["text"] for r in results).split())  # every character, in order
