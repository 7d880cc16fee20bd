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


def relative_luminance(rgb: tuple[int, int, int]) -> float:
    """WCAG 2 relative luminance of an sRGB colour."""

    def channel(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = rgb
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast_ratio(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """WCAG 2 contrast ratio, 1 (same) to 21 (black on white); AA asks 4.5 for text."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def text_color_on(value: float) -> str:
    """Black or white, whichever contrasts more with viridis(value) (at least 4.6:1 along the whole scale;
    a brightness threshold picked white on the mid greens, 4.2:1)."""
    bg = viridis(value)
    return "#000000" if contrast_ratio(bg, (0, 0, 0)) >= contrast_ratio(bg, (255, 255, 255)) else "#ffffff"


def confidence_color(prob: float) -> str:
    """Colour for a token's probability: red (unsure) → yellow → green (confident)."""
    p = min(1.0, max(0.0, prob))
    if p < 0.5:
        r, g = 220, int(60 + 300 * p)
    else:
        r, g = int(220 - 340 * (p - 0.5)), 210
    return f"#{max(0, min(255, r)):02x}{max(0, min(255, g)):02x}50"
