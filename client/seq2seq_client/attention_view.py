"""Draw the attention maps of one translation: a PNG heatmap, or one self-contained HTML file to explore them.

Works on the proto message `Attention` as a plain dict: `json_format.MessageToDict(msg,
preserving_proto_field_name=True)` (which leaves out zero-valued fields: a missing `layer` or `head` is 0), or
`seq2seq.attention_maps.AttentionMaps.to_dict()` offline. No torch, no numpy; matplotlib only inside `write_png`.
Layers and heads are 0-based, as in the API; head -1 is the average over heads.
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .attention_template import HTML_TEMPLATE

KINDS = ("cross", "decoder_self", "encoder_self")
KIND_TITLES = {"cross": "Cross-attention", "decoder_self": "Decoder self-attention",
               "encoder_self": "Encoder self-attention"}


@dataclass(frozen=True)
class Heatmap:
    """One map, ready to draw: rows attend to columns, each row of `weights` sums to 1."""

    title: str
    row_tokens: tuple[str, ...]  # the queries
    col_tokens: tuple[str, ...]  # the keys
    weights: list[list[float]]  # len(row_tokens) × len(col_tokens)


def tokens_of(attention: dict[str, Any], kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(query tokens, key tokens) of a kind of map: the rows and columns it is drawn with."""
    source, target = tuple(attention.get("source_tokens", ())), tuple(attention.get("target_tokens", ()))
    return {"cross": (target, source), "decoder_self": (target, target), "encoder_self": (source, source)}[kind]


def read_map(message: dict[str, Any], rows: int, cols: int) -> tuple[int, int, list[float]]:
    """An AttentionMap dict -> (layer, head, flat row-major weights), checked against the expected size."""
    layer, head, weights = int(message.get("layer", 0)), int(message.get("head", 0)), message.get("weights", [])
    shape = (int(message.get("rows", 0)), int(message.get("cols", 0)))
    if shape != (rows, cols) or len(weights) != rows * cols:
        raise ValueError(f"attention map layer {layer} head {head} is {shape[0]}×{shape[1]} with {len(weights)} "
                         f"weights; its tokens make it {rows}×{cols}")
    return layer, head, [float(w) for w in weights]


def layers_of(attention: dict[str, Any], kind: str) -> dict[int, dict[int, list[float]]]:
    """{layer: {head: flat weights}} of one kind; for "cross" without per-head maps, the cross_average alone."""
    rows, cols = (len(t) for t in tokens_of(attention, kind))
    layers: dict[int, dict[int, list[float]]] = {}
    for message in attention.get(kind, []):
        layer, head, weights = read_map(message, rows, cols)
        layers.setdefault(layer, {})[head] = weights
    if kind == "cross" and "cross_average" in attention:
        layer, _, weights = read_map(attention["cross_average"], rows, cols)
        layers.setdefault(layer, {})[-1] = weights
    return dict(sorted(layers.items()))


def select_map(attention: dict[str, Any], layer: int | None = None, head: int | None = None,
               kind: str = "cross") -> Heatmap:
    """One map to draw. layer None = the last layer; head None = the average over heads (for "cross", layer and
    head None is `cross_average`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of attention map {kind!r}; use one of {', '.join(KINDS)}")
    layers = layers_of(attention, kind)
    if not layers:
        raise ValueError(f"the attention has no {kind} maps (ask the server for them)")
    layer = max(layers) if layer is None else layer
    if layer not in layers:
        raise ValueError(f"layer {layer} is not in the {kind} maps; they have layers {sorted(layers)}")
    heads = {h: w for h, w in layers[layer].items() if h >= 0}
    if head is not None and head not in heads:
        raise ValueError(f"head {head} is not in layer {layer} of the {kind} maps; it has heads {sorted(heads)}")
    if head is None:
        flat = layers[layer].get(-1) or [sum(ws) / len(heads) for ws in zip(*heads.values())]
        which = f"average of {len(heads)} heads" if heads else "average of the heads"
    else:
        flat, which = heads[head], f"head {head}"
    row_tokens, col_tokens = tokens_of(attention, kind)
    n = len(col_tokens)
    weights = [flat[i * n:(i + 1) * n] for i in range(len(row_tokens))]
    return Heatmap(f"{KIND_TITLES[kind]}, layer {layer}, {which}", row_tokens, col_tokens, weights)


def write_png(attention: dict[str, Any], path: str | Path, layer: int | None = None, head: int | None = None,
              kind: str = "cross") -> None:
    """A heatmap of one map (default: cross_average): rows = queries (the target for cross-attention), columns =
    keys (the source), labelled with their pieces, with a colour bar; see `select_map` for layer and head."""
    import matplotlib  # lazily: the client runs without matplotlib unless a PNG is asked for
    from matplotlib.figure import Figure  # not pyplot: no global figure state, no GUI backend

    heatmap = select_map(attention, layer, head, kind)
    n_rows, n_cols = len(heatmap.row_tokens), len(heatmap.col_tokens)
    fig = Figure(figsize=(2.5 + 0.32 * n_cols, 1.8 + 0.3 * n_rows), layout="constrained")
    ax = fig.add_subplot()
    # masked cells (the decoder's causal mask) are NaN, drawn in the colour map's "bad" grey, not as a weight 0
    cells = [[float("nan") if kind == "decoder_self" and j > i else w for j, w in enumerate(row)]
             for i, row in enumerate(heatmap.weights)]
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d0d0d0")
    image = ax.imshow(cells, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(n_cols), labels=heatmap.col_tokens, rotation=90)
    ax.set_yticks(range(n_rows), labels=heatmap.row_tokens)
    queries, keys = {"cross": ("target", "source"), "decoder_self": ("target", "target (earlier tokens)"),
                     "encoder_self": ("source", "source")}[kind]
    ax.set_xlabel(f"attended to: {keys}")
    ax.set_ylabel(f"attending: {queries}")
    ax.set_title(heatmap.title, fontsize=10)
    fig.colorbar(image, ax=ax, label="attention weight", shrink=0.8)
    fig.savefig(path, format="png", dpi=110)


def viewer_data(attention: dict[str, Any]) -> dict[str, Any]:
    """What the HTML file embeds for attention-viewer.js: the message as the viewer reads it (tokens, words,
    alignment, maps), each map checked against its tokens with layer and head written out, and its weights rounded
    to 5 decimals (display only). Raises ValueError on a wrong map size or a layer with missing heads."""
    keys = ("source_tokens", "target_tokens", "source_words", "target_words", "alignment")
    data: dict[str, Any] = {k: list(attention.get(k, [])) for k in keys}
    for kind in KINDS:
        rows, cols = (len(t) for t in tokens_of(attention, kind))
        data[kind] = [_checked(m, rows, cols) for m in attention.get(kind, [])]
        for layer, heads in layers_of(data, kind).items():
            per_head = sorted(h for h in heads if h >= 0)
            if per_head != list(range(len(per_head))):
                raise ValueError(f"{kind} layer {layer} has heads {per_head}; expected 0..{len(per_head) - 1}")
    if "cross_average" in attention:
        data["cross_average"] = _checked(attention["cross_average"], *map(len, tokens_of(attention, "cross")))
    return data


def _checked(message: dict[str, Any], rows: int, cols: int) -> dict[str, Any]:
    layer, head, weights = read_map(message, rows, cols)
    return {"layer": layer, "head": head, "rows": rows, "cols": cols, "weights": [round(w, 5) for w in weights]}


def _static(name: str) -> str:
    """A file of the viewer (web/static), to inline: it must not end its <style> or <script> element early."""
    # from this package, not by importing seq2seq_client.web: its gateway needs aiohttp, the file writer does not
    text = (resources.files(__package__) / "web" / "static" / name).read_text(encoding="utf-8")
    if re.search(r"</(script|style)", text, re.IGNORECASE):
        raise ValueError(f"{name} contains a closing </script> or </style> tag: it cannot be inlined")
    return text


def write_html(attention: dict[str, Any], path: str | Path, title: str = "") -> None:
    """One self-contained HTML file (the viewer's CSS and script inlined, the maps embedded as JSON, nothing
    fetched): hover a target token to light up the source tokens it attends to, pick the map (cross-attention,
    decoder or encoder self-attention; layer; head or their average), and re-sharpen or flatten the weights with a
    temperature τ. The viewer is web/static/attention-viewer.js, the same as the web page's."""
    data = viewer_data(attention)
    if not layers_of(data, "cross"):
        raise ValueError("the attention has no cross-attention map to show")
    # "<", ">" and "&" escaped, so no token (such as "</s>") can close the script element early
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    payload = payload.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    fill = {"TITLE": html.escape(title or "Attention maps"), "DATA": payload,
            "STYLE": _static("attention-viewer.css"), "SCRIPT": _static("attention-viewer.js")}
    # one pass: what is filled in is never searched for placeholders again
    page = re.sub(r"__(TITLE|DATA|STYLE|SCRIPT)__", lambda m: fill[m.group(1)], HTML_TEMPLATE)
    Path(path).write_text(page, encoding="utf-8")
