"""The shapes world: an endless, deterministic data set of 64x64 images of simple shapes with captions.

Item ``i`` of the data set with seed ``s`` is drawn from its own ``numpy`` generator
seeded with ``(s, i)``, so the set is random-access and endless, and the same on
every machine. An item is a ``Scene`` (one or two objects on a flat background);
``render`` draws it and ``caption`` describes it in one of several forms, from
"a small red circle in the top left on a blue background" down to "a red circle",
so that plain prompts work as well as full ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
#: Drawn this many times larger, then box-filtered down: anti-aliased edges.
_SUPERSAMPLE = 2

SHAPES = ("circle", "square", "triangle", "star")
#: Well-separated RGB colors; objects and backgrounds both come from this palette.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 50),
    "blue": (40, 70, 225),
    "yellow": (245, 220, 40),
    "purple": (145, 50, 185),
    "cyan": (40, 210, 225),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOR_NAMES = tuple(COLORS)
SIZES = ("small", "large")
#: Radius range (pixels, at 64x64) of each size.
_RADIUS = {"small": (8.0, 10.0), "large": (13.0, 16.0)}
#: A 3x3 grid of named regions, row-major; the phrase each takes in a caption.
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
_PHRASE = {
    "top left": "in the top left",
    "top": "at the top",
    "top right": "in the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}
_CELL_CENTERS = (16.0, 32.0, 48.0)
_JITTER = 2.0
#: Share of items with two objects (both small, in different regions).
TWO_OBJECT_SHARE = 0.15
#: Chance that a caption names each optional attribute of an object / of the scene.
_NAME_SIZE, _NAME_POSITION, _NAME_BACKGROUND = 0.5, 0.5, 0.5

#: Every word a caption can use: the tokenizer's vocabulary.
VOCABULARY = sorted(
    {"a", "and", "on", "background"}
    | set(SHAPES)
    | set(COLOR_NAMES)
    | set(SIZES)
    | {word for phrase in _PHRASE.values() for word in phrase.split()}
)


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    position: str
    cx: float
    cy: float
    radius: float


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str


def scene(index: int, seed: int = 0, *, two_object_share: float = TWO_OBJECT_SHARE) -> Scene:
    """The scene of item ``index`` of the data set with ``seed``."""
    rng = np.random.default_rng([seed, index])
    count = 2 if rng.random() < two_object_share else 1
    regions = rng.choice(len(POSITIONS), size=count, replace=False)
    colors = [COLOR_NAMES[int(c)] for c in rng.choice(len(COLOR_NAMES), size=count + 1, replace=False)]
    background = colors.pop()
    objects = []
    for region, color in zip(regions, colors):
        size = "small" if count == 2 else SIZES[int(rng.integers(len(SIZES)))]
        low, high = _RADIUS[size]
        row, col = divmod(int(region), 3)
        objects.append(
            Obj(
                shape=SHAPES[int(rng.integers(len(SHAPES)))],
                color=color,
                size=size,
                position=POSITIONS[int(region)],
                cx=_CELL_CENTERS[col] + rng.uniform(-_JITTER, _JITTER),
                cy=_CELL_CENTERS[row] + rng.uniform(-_JITTER, _JITTER),
                radius=rng.uniform(low, high),
            )
        )
    return Scene(tuple(objects), background)


def single(shape: str, color: str, size: str, position: str, background: str, *, seed: int = 0) -> Scene:
    """A one-object scene with the given attributes; ``seed`` picks the jitter and the radius."""
    if color == background:
        raise ValueError(f"object and background must differ in color, both are {color!r}")
    rng = np.random.default_rng([seed, 1 << 20])
    row, col = divmod(POSITIONS.index(position), 3)
    low, high = _RADIUS[size]
    obj = Obj(
        shape,
        color,
        size,
        position,
        _CELL_CENTERS[col] + rng.uniform(-_JITTER, _JITTER),
        _CELL_CENTERS[row] + rng.uniform(-_JITTER, _JITTER),
        rng.uniform(low, high),
    )
    return Scene((obj,), background)


def _outline(obj: Obj, scale: float) -> list[tuple[float, float]] | tuple[float, float, float, float]:
    cx, cy, r = obj.cx * scale, obj.cy * scale, obj.radius * scale
    if obj.shape == "circle":
        return (cx - r, cy - r, cx + r, cy + r)
    if obj.shape == "square":
        h = r * 0.85
        return (cx - h, cy - h, cx + h, cy + h)
    if obj.shape == "triangle":
        return [(cx, cy - r), (cx - r * 0.95, cy + r * 0.75), (cx + r * 0.95, cy + r * 0.75)]
    if obj.shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        return [(cx + rr * np.cos(a), cy + rr * np.sin(a)) for a, rr in zip(angles, radii)]
    raise ValueError(f"unknown shape {obj.shape!r}; known: {', '.join(SHAPES)}")


def render(s: Scene) -> np.ndarray:
    """The scene as a (64, 64, 3) uint8 RGB array."""
    big = SIZE * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), COLORS[s.background])
    draw = ImageDraw.Draw(image)
    for obj in s.objects:
        outline = _outline(obj, _SUPERSAMPLE)
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse(outline, fill=fill)
        elif obj.shape == "square":
            draw.rectangle(outline, fill=fill)
        else:
            draw.polygon(outline, fill=fill)
    return np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BOX))


def describe(obj: Obj, *, size: bool, position: bool) -> str:
    words = ["a"] + ([obj.size] if size else []) + [obj.color, obj.shape]
    if position:
        words.append(_PHRASE[obj.position])
    return " ".join(words)


def caption(s: Scene, rng: np.random.Generator | None = None) -> str:
    """A caption of ``s``; ``rng`` picks which optional attributes it names (``None``: all of them)."""
    return _caption(s, rng)[0]


def _caption(s: Scene, rng: np.random.Generator | None) -> tuple[str, dict[str, str]]:
    """The caption and, for a one-object scene, the attributes it names."""

    def named(p: float) -> bool:
        return True if rng is None else bool(rng.random() < p)

    position = named(_NAME_POSITION)  # both objects of a pair are placed, or neither
    sizes = []
    parts = []
    for obj in s.objects:
        sizes.append(named(_NAME_SIZE))
        parts.append(describe(obj, size=sizes[-1], position=position))
    text = " and ".join(parts)
    first = s.objects[0]
    attributes = {"shape": first.shape, "color": first.color}
    if sizes[0]:
        attributes["size"] = first.size
    if position:
        attributes["position"] = first.position
    if named(_NAME_BACKGROUND):
        text += f" on a {s.background} background"
        attributes["background"] = s.background
    return text, attributes


def parse(text: str) -> tuple[list[dict[str, str]], str | None]:
    """What a caption names: one dict per object (shape and color, size and position when
    named) and the background color, or ``None`` where it names none. ``""`` names nothing."""
    background = None
    if text.endswith(" background"):
        text, _, named_background = text.rpartition(" on a ")
        background = named_background.removesuffix(" background")
    objects = []
    for part in text.split(" and ") if text else []:
        obj = {}
        for position, phrase in _PHRASE.items():
            if part.endswith(" " + phrase):
                obj["position"] = position
                part = part[: -len(phrase) - 1]
                break
        words = part.split()[1:]  # after "a"
        if words[0] in SIZES:
            obj["size"] = words.pop(0)
        obj["color"], obj["shape"] = words
        objects.append(obj)
    return objects, background


@dataclass(frozen=True)
class Prompt:
    """A one-object prompt and the attributes it names (what the yardstick checks)."""

    text: str
    named: dict[str, str]


def prompts(n: int, seed: int = 0) -> list[Prompt]:
    """``n`` one-object prompts drawn as the data set draws its captions: plain to full forms."""
    out = []
    for i in range(n):
        text, attributes = _caption(scene(i, seed, two_object_share=0.0), np.random.default_rng([seed, i, 1]))
        out.append(Prompt(text, attributes))
    return out


def caption_of(index: int, seed: int = 0) -> str:
    """The caption of item ``index``: its form drawn from the item's own generator."""
    return caption(scene(index, seed), np.random.default_rng([seed, index, 1]))


def images(indices, seed: int = 0, **kwargs) -> np.ndarray:
    """Items ``indices`` as one (n, 64, 64, 3) uint8 array."""
    return np.stack([render(scene(int(i), seed, **kwargs)) for i in indices])


#: Seed of the captions ``mixdiff quantize`` calibrates on by default (not the training seed).
CALIBRATION_SEED = 7919


def calibration_prompts(n: int) -> list[str]:
    """``n`` captions of the data set, from a seed of their own: default calibration prompts."""
    return [caption_of(i, CALIBRATION_SEED) for i in range(n)]


#: Seed of the images ``mixdiff quantize qat --data shapes`` trains on.
QAT_SEED = 6007
#: Seed of the images ``mixdiff distill lcm --data shapes`` trains on.
DISTILL_SEED = 4409


def examples(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Items ``0..n-1`` of the data set with ``seed``: their images and captions."""
    return images(range(n), seed), [caption_of(i, seed) for i in range(n)]
