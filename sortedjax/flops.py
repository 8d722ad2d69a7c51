"""FLOPs of a sub-model, computed from the architecture and the sub-model's sizes.

A model lists the convolutions / linear layers a concrete sub-model runs as
``(h_out, w_out, kh, kw, cin_per_group, cout)`` (``model.conv_specs(sizes, image)``; layers
past the depth are not run, kept channels only). :func:`macs` sums
``h_out * w_out * kh * kw * cin_per_group * cout``; following the vision literature the thesis
follows (MobileNetV2, slimmable networks), "FLOPs" in the tables are these multiply-accumulates.
Normalisation, activations and pooling are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def macs_of(specs: Iterable[tuple[int, int, int, int, int, int]]) -> int:
    total = 0
    for spec in specs:
        if len(spec) != 6 or min(spec) < 1:
            raise ValueError(f"a layer spec is 6 positive ints (h, w, kh, kw, cin/groups, cout), got {spec}")
        h, w, kh, kw, cin, cout = spec
        total += h * w * kh * kw * cin * cout
    return int(total)


def macs(model, sizes: Mapping[str, int] | None = None, image: tuple[int, int] = (32, 32)) -> int:
    """Multiply-accumulates of ``model``'s sub-model ``sizes`` on one ``image``-sized input."""
    if not hasattr(model, "conv_specs"):
        raise TypeError(f"{type(model).__name__} has no conv_specs(sizes, image); FLOPs need the layer list")
    return macs_of(model.conv_specs(dict(sizes or {}), tuple(image)))


def mflops(model, sizes: Mapping[str, int] | None = None, image: tuple[int, int] = (32, 32)) -> float:
    """:func:`macs` in millions (the "MFLOPs" of the thesis' tables)."""
    return macs(model, sizes, image) / 1e6
