"""One SentencePiece model for French and English (a joint vocabulary), and the one home of the special ids.

Ids follow Marian's convention so that a model exports one-to-one to Marian / CTranslate2 / transformers:
`</s>` = 0, `<unk>` = 1, then the pieces, then `<pad>` = the last id (vocab_size − 1), which is added after
SentencePiece's pieces and doubles as the decoder's start symbol. There is no `<s>`.

Trained with `bt_tag=True`, the model also reserves `<BT>` (id 2, before the pieces), the tag of tagged
back-translation (Caswell et al. 2019). It is a SentencePiece *control* symbol: encoding text never produces it (the
text "<BT>" becomes ordinary pieces), so only `seq2seq.data` can put it in front of a synthetic source. A
user-defined symbol would not do: SentencePiece matches those in the input text.
"""
from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

EOS_ID = 0  # </s>
UNK_ID = 1  # <unk>
BT_TAG = "<BT>"  # the back-translation tag, a control symbol (see above); present only when trained with bt_tag
# <pad> = number of SentencePiece pieces (the last id of the model's vocabulary); see Tokenizer.pad_id.


class Tokenizer:
    """Text <-> ids. `vocab_size` counts `<pad>`, so it equals `ModelConfig.vocab_size`."""

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        if self.sp.eos_id() != EOS_ID or self.sp.unk_id() != UNK_ID:
            raise ValueError("SentencePiece model has the wrong special ids: expected </s> = 0 and <unk> = 1")

    @classmethod
    def train(cls, sentences: Iterable[str], vocab_size: int, model_type: str = "unigram",
              max_sentences: int = 400_000, bt_tag: bool = False) -> "Tokenizer":
        """Train on an iterable of sentences (both languages mixed). `vocab_size` counts pieces without <pad> (and
        with <BT> when `bt_tag` reserves it).

        Normalization is SentencePiece's `nmt_nfkc`: NFKC maps the no-break spaces in the data (U+00A0, U+202F)
        to a plain space, so "Quoi ?" with a thin space and with a plain space give the same ids.
        """
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size, model_type=model_type,
            eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1, pad_id=-1, character_coverage=1.0,
            normalization_rule_name="nmt_nfkc", input_sentence_size=max_sentences, shuffle_input_sentence=True,
            hard_vocab_limit=False, num_threads=2, minloglevel=2, control_symbols=[BT_TAG] if bt_tag else [])
        return cls(model.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        return cls(Path(path).read_bytes())

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.model_proto)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() + 1  # + <pad>

    @property
    def pad_id(self) -> int:
        return self.sp.get_piece_size()

    eos_id, unk_id = EOS_ID, UNK_ID

    @property
    def bt_tag_id(self) -> int | None:
        """The id of <BT>, or None when this model was trained without it."""
        i = self.sp.piece_to_id(BT_TAG)
        return i if self.sp.is_control(i) else None  # an unknown piece maps to <unk>, which is not control

    def encode(self, text: str) -> list[int]:
        """Text -> piece ids, without </s>."""
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; </s>, <pad> and anything after </s> are dropped."""
        out = []
        for i in ids:
            if i == EOS_ID:
                break
            if i != self.pad_id:
                out.append(int(i))
        return self.sp.decode(out)

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """Ids -> their surface pieces (for attention maps); <pad> shows as '<pad>'."""
        return ["<pad>" if i == self.pad_id else self.sp.id_to_piece(int(i)) for i in ids]

    def glued_ids(self) -> list[int]:
        """The pieces that continue the word before them: no word-start mark "▁" and a letter or digit first (so
        not punctuation, which may follow any word)."""
        return [i for i in range(self.sp.get_piece_size())
                if not self.sp.is_control(i) and not self.sp.is_unknown(i)
                and not (p := self.sp.id_to_piece(i)).startswith("▁") and p[:1].isalnum()]

    def piece_ids(self, pieces: Iterable[str]) -> list[int]:
        """The mirror of `pieces`: surface pieces -> ids (a piece not in the vocabulary gets <unk>)."""
        return [self.pad_id if p == "<pad>" else self.sp.piece_to_id(p) for p in pieces]
