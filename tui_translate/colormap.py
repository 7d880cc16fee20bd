"""Perceptual colour scale (viridis) for attention weights, torch-free (used by the CLI and the app)."""

from __future__ import annotations

# viridis sampled at 9 evenly spaced points (matplotlib's table); linear interpolation in between
_VIRIDIS = [
    (0x44, 0x01, 0x54), (0x47, 0x2C, 0x7A), (0x3B, 0x52, 0x8B), (0x2C, 0x72, 0x8E), (0x21, 0x91, 0x8C),
    (0x28, 0xAE, 0x80), (0x5E, 0xC9, 0x62), (0xAD, 0xDC, 0x30), (0xFD, 0xE7, 0x25),
]


def viridis(value: float) -> tuple[int, int, int]:
    """Map value in [0, 1] (clipped) to an (r, g, b) colour."""
    v = 0.0 if value != value else min(1.0, max(0.0, float(value)))  # NaN -> 0
    x = v * (len(_VIRIDIS) - 1)
    i = min(int(x), len(_VIRIDIS) - 2)
    f = x - i
    a, b = _VIRIDIS[i], _VIRIDIS[i + 1]
    return tuple(round(a[k] + (b[k] - a[k]) * f) for k in range(3))  # type: ignore[return-value]


def hex_color(value: float) -> str:
    r, g, b = viridis(value)
    return f"#{r:02x}{g:02x}{b:02x}"


def text_color_on(value: float) -> str:
    """Black or white, whichever reads better on viridis(value)."""
    r, g, b = viridis(value)
    return "#000000" if (0.299 * r + 0.587 * g + 0.114 * b) > 140 else "#ffffff"


def confidence_color(prob: float) -> str:
    """Colour for a token's probability: red (unsure) → yellow → green (confident)."""
    p = min(1.0, max(0.0, prob))
    if p < 0.5:
        r, g = 220, int(60 + 300 * p)
    else:
        r, g = int(220 - 340 * (p - 0.5)), 210
    return f"#{max(0, min(255, r)):02x}{max(0, min(255, g)):02x}50"
