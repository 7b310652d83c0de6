"""`seq2seq-export --format marian|ctranslate2|seq2seq --out DIR`: a Hugging Face MarianMTModel folder, a CTranslate2
model, or our own shipped form (model.safetensors in fp16, spm.model, config.json: what models/ holds).

The Marian folder loads with `transformers.MarianMTModel.from_pretrained(DIR)` / `MarianTokenizer.from_pretrained(DIR)`
and gives our logits exactly. It maps one-to-one because our model follows Marian's conventions: [sin | cos]
positions from 0, embeddings × √d_model, post-norm, ReLU, `</s>` = 0, `<unk>` = 1, `<pad>` = the last id and the
decoder start symbol. One convention it does not share: the <pad> row of a trained model is not zero (the tied output
projection trains it), whereas CTranslate2's Marian loader starts the decoder from a zero vector. So a plain
`ct2-transformers-converter --model DIR` gives a different first step (and translations that drop their first
words); `--format ctranslate2` converts through that loader and then folds our start embedding into the decoder's
position 0, which only the start symbol uses (see `fold_start_embedding`).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_model, save_model_dir
from .options import ArgumentParser, add_model_flags
from .model import Transformer
from .tokenizer import Tokenizer


def marian_config(model: Transformer) -> dict:
    """Every MarianConfig field that matters, set explicitly: its defaults are opus-mt's (gelu, ...)."""
    c, v = model.config, model.config.vocab_size
    return {
        "architectures": ["MarianMTModel"], "model_type": "marian",
        "vocab_size": v, "decoder_vocab_size": v, "share_encoder_decoder_embeddings": True,
        "tie_word_embeddings": True, "d_model": c.d_model,
        "encoder_layers": c.n_layers, "decoder_layers": c.n_dec_layers,
        "encoder_attention_heads": c.n_heads, "decoder_attention_heads": c.n_heads,
        "encoder_ffn_dim": c.d_ff, "decoder_ffn_dim": c.d_ff, "activation_function": "relu",
        "dropout": c.dropout, "attention_dropout": c.attention_dropout, "activation_dropout": c.activation_dropout,
        "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0, "init_std": 0.02,
        "max_position_embeddings": c.max_positions, "scale_embedding": True, "static_position_embeddings": True,
        "normalize_embedding": False, "add_bias_logits": False, "normalize_before": False,
        "pad_token_id": c.pad_id, "eos_token_id": 0, "decoder_start_token_id": c.pad_id, "bos_token_id": None,
        "forced_eos_token_id": 0, "bad_words_ids": [[c.pad_id]], "is_encoder_decoder": True, "use_cache": True,
        "num_beams": 4, "max_length": 512,
    }


def marian_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our parameter names -> MarianMTModel's. Fused projections are split: qkv_proj -> q/k/v_proj, kv_proj -> k/v."""
    if model.config.pre_norm:
        raise ValueError("Marian has no pre-norm variant: only post-norm models export")
    s = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    emb = s["embed.tokens.weight"]
    out = {"model.shared.weight": emb, "model.encoder.embed_tokens.weight": emb,
           "model.decoder.embed_tokens.weight": emb, "lm_head.weight": emb,
           # <pad> is never an output: −inf, as our model's logit (and CTranslate2 drops that column)
           "final_logits_bias": torch.zeros(1, emb.size(0)).index_fill(1, torch.tensor([model.pad_id]), float("-inf"))}

    def linear(src: str, dst: str) -> None:
        out[f"{dst}.weight"], out[f"{dst}.bias"] = s[f"{src}.weight"], s[f"{src}.bias"]

    def split(src: str, dsts: list[str]) -> None:
        for name, w, b in zip(dsts, s[f"{src}.weight"].chunk(len(dsts)), s[f"{src}.bias"].chunk(len(dsts))):
            out[f"{name}.weight"], out[f"{name}.bias"] = w.contiguous(), b.contiguous()

    def self_attention_and_ffn(a: str, b: str, self_norm: str) -> None:
        """What encoder and decoder layers share: self-attention, feed-forward and their norms."""
        split(f"{a}.self_attn.qkv_proj", [f"{b}.self_attn.{x}_proj" for x in "qkv"])
        linear(f"{a}.self_attn.out_proj", f"{b}.self_attn.out_proj")
        linear(f"{a}.{self_norm}.norm", f"{b}.self_attn_layer_norm")
        linear(f"{a}.ffn.fc1", f"{b}.fc1")
        linear(f"{a}.ffn.fc2", f"{b}.fc2")
        linear(f"{a}.sub_ffn.norm", f"{b}.final_layer_norm")

    for i in range(model.config.n_layers):
        self_attention_and_ffn(f"encoder.{i}", f"model.encoder.layers.{i}", "sub_attn")
    for i in range(model.config.n_dec_layers):
        a, b = f"decoder.{i}", f"model.decoder.layers.{i}"
        self_attention_and_ffn(a, b, "sub_self")
        linear(f"{a}.cross_attn.q_proj", f"{b}.encoder_attn.q_proj")
        split(f"{a}.cross_attn.kv_proj", [f"{b}.encoder_attn.{x}_proj" for x in "kv"])
        linear(f"{a}.cross_attn.out_proj", f"{b}.encoder_attn.out_proj")
        linear(f"{a}.sub_cross.norm", f"{b}.encoder_attn_layer_norm")
    return out


def write_tokenizer(tokenizer: Tokenizer, out: Path, src_lang: str = "fr", tgt_lang: str = "en") -> None:
    """source.spm and target.spm (the same joint model), vocab.json (piece -> our id), tokenizer_config.json."""
    for name in ("source.spm", "target.spm"):
        tokenizer.save(out / name)
    vocab = {tokenizer.sp.id_to_piece(i): i for i in range(tokenizer.pad_id)}
    vocab["<pad>"] = tokenizer.pad_id
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "MarianTokenizer", "source_lang": src_lang, "target_lang": tgt_lang,
        "separate_vocabs": False, "model_max_length": 512, "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<pad>"}, indent=2), encoding="utf-8")


def check_out(out: str | Path) -> Path:
    """`out` must be new or an existing empty directory: an export never overwrites anything."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty directory")
    return out


def export_marian(model: Transformer, tokenizer: Tokenizer, out: str | Path) -> Path:
    """Write the folder; `out` may be new or an existing empty directory."""
    from safetensors.torch import save_file

    out = check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = marian_state_dict(model)
    # safetensors refuses shared storage: the tied embedding is written once under each name it has.
    save_file({k: v.clone() for k, v in weights.items()}, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(marian_config(model), indent=2), encoding="utf-8")
    (out / "generation_config.json").write_text(json.dumps({
        "bad_words_ids": [[model.pad_id]], "decoder_start_token_id": model.pad_id, "eos_token_id": 0,
        "forced_eos_token_id": 0, "max_length": 512, "num_beams": 4, "pad_token_id": model.pad_id}, indent=2))
    write_tokenizer(tokenizer, out)
    return out


def start_input(model: Transformer) -> torch.Tensor:
    """What our decoder adds up at step 0: emb(<pad>) × √d_model + PE(0), (D,) float32 (dropout aside)."""
    e = model.embed
    return (e.tokens.weight[model.pad_id] * e.scale + e.positions[0]).detach().float()


def fold_start_embedding(spec, first_input: torch.Tensor) -> None:
    """Make a converted CTranslate2 spec start its decoder where ours does.

    CTranslate2 (`start_from_zero_embedding`, Marian's convention) replaces the start token's embedding by zeros at
    step 0 and adds position encoding 0, whereas our start symbol <pad> has a trained, non-zero row. The decoder's
    position 0 is used by the start symbol alone, so setting that row to our whole first input (embedding + PE(0))
    gives CTranslate2 our step-0 input exactly, while its vocabulary, later steps and the encoder stay unchanged.
    """
    if not spec.decoder.start_from_zero_embedding:
        raise ValueError("CTranslate2's Marian loader no longer starts from a zero embedding: cannot fold")
    encodings = spec.decoder.position_encodings.encodings.detach().clone()  # (max_positions, D)
    encodings[0] = first_input.to(encodings.dtype)
    spec.decoder.position_encodings.encodings = encodings


def export_ctranslate2(model: Transformer, tokenizer: Tokenizer, out: str | Path) -> Path:
    """A CTranslate2 model folder (float32 weights; quantize at load with `compute_type`) with source.spm and
    target.spm; `out` may be new or an existing empty directory. Needs the `ctranslate2` package."""
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def _load(self):  # the hook ctranslate2's Converter.convert calls to build the spec
            spec = super()._load()
            fold_start_embedding(spec, start_input(model))
            return spec

    out = check_out(out)
    with tempfile.TemporaryDirectory() as tmp:
        marian = export_marian(model, tokenizer, Path(tmp) / "marian")
        # force: `out` is new or empty (checked above), and the converter refuses any existing directory.
        Converter(str(marian), copy_files=["source.spm", "target.spm"]).convert(str(out), force=True)
    return out


def export_seq2seq(model: Transformer, tokenizer: Tokenizer, out: str | Path) -> Path:
    """Weights in fp16 (half the size; bf16/fp32 inference casts them back), tokenizer and model config."""
    payload = {"model": model.state_dict(), "configs": {"model": model.config.to_dict()},
               "tokenizer": tokenizer.model_proto}
    return save_model_dir(payload, check_out(out))


EXPORTERS = {"marian": export_marian, "ctranslate2": export_ctranslate2, "seq2seq": export_seq2seq}


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="seq2seq-export", description=__doc__.split("\n")[0])
    add_model_flags(p, device=False)
    p.add_argument("--format", default="marian", choices=sorted(EXPORTERS))
    p.add_argument("--out", required=True, help="a new or an existing empty directory")
    args = p.parse_args(argv)
    try:
        model, tokenizer = load_model(args.model)
        print(EXPORTERS[args.format](model, tokenizer, args.out))
    except (CheckpointError, ValueError, OSError, ImportError) as e:
        print(f"seq2seq-export: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
