"""The synthetic shapes data set: 64x64 pictures of one to three flat shapes, captioned with what is where.

Every picture has a plain background (black, gray or white) and one to three shapes (circle, square, triangle,
star), each in its own colour and in its own cell of a 3x3 grid named "top left" ... "bottom right"; the caption
says all of it: "a red circle at the top left and a blue square at the bottom, on a gray background". A scene is
a pure function of (seed, index), so the data set needs no storage and any machine draws the same pictures.

`held_out_scenes` are the captions the semantic test asks for; `training_scene` never draws one of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64  # pixels, square
SUPERSAMPLE = 4  # drawn at 4x and box-filtered down: smooth edges, the same pixels on every machine

# Fully saturated, far apart in RGB, so a colour mask of a decoded picture needs no tuning.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 145, 30),
    "yellow": (240, 225, 50),
    "green": (40, 170, 70),
    "blue": (40, 90, 225),
    "purple": (150, 60, 200),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle", "star")
# (row, column) of the 3x3 grid -> the words the caption uses.
PLACES: dict[tuple[int, int], str] = {
    (0, 0): "at the top left", (0, 1): "at the top", (0, 2): "at the top right",
    (1, 0): "on the left", (1, 1): "in the center", (1, 2): "on the right",
    (2, 0): "at the bottom left", (2, 1): "at the bottom", (2, 2): "at the bottom right",
}  # fmt: skip
MAX_OBJECTS = 3
RADIUS = (7.0, 9.5)  # pixels, drawn uniformly: a shape fills most of its 21-pixel cell
JITTER = 2.0  # pixels a shape's centre may move from its cell's centre, either way


@dataclass(frozen=True)
class ShapeObject:
    colour: str
    shape: str
    place: tuple[int, int]  # (row, column) in the 3x3 grid

    @property
    def words(self) -> str:
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {self.shape} {PLACES[self.place]}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    background: str

    @property
    def caption(self) -> str:
        parts = [obj.words for obj in self.objects]
        listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
        return f"{listed}, on a {self.background} background"

    @property
    def key(self) -> tuple:
        """What the caption asks for, whatever the order it lists the objects in."""
        return (self.background, frozenset(self.objects))


def vocabulary() -> list[str]:
    """Every word a caption can use."""
    words = {"a", "an", "and", "on", "background"} | set(COLOURS) | set(BACKGROUNDS) | set(SHAPES)
    for phrase in PLACES.values():
        words |= set(phrase.split())
    return sorted(words)


def caption_corpus() -> list[str]:
    """Sentences that use every caption word in every position it can take, for training a tokenizer."""
    rng = np.random.default_rng(0)
    return [_random_scene(rng).caption for _ in range(2000)]


def _random_scene(rng: np.random.Generator) -> Scene:
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    colours = rng.choice(len(COLOURS), size=count, replace=False)
    cells = rng.choice(len(PLACES), size=count, replace=False)
    places = list(PLACES)
    objects = tuple(
        ShapeObject(list(COLOURS)[c], SHAPES[int(rng.integers(len(SHAPES)))], places[p]) for c, p in zip(colours, cells)
    )
    return Scene(objects, list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))])


def held_out_scenes(count: int = 20, seed: int = 1000) -> list[Scene]:
    """The semantic test's captions: `count` distinct scenes, about a third each with one, two and three shapes."""
    rng = np.random.default_rng(seed)
    scenes: dict[tuple, Scene] = {}
    while len(scenes) < count:
        scene = _random_scene(rng)
        if len(scene.objects) == 1 + len(scenes) % MAX_OBJECTS:
            scenes.setdefault(scene.key, scene)
    return list(scenes.values())


def training_scene(seed: int, index: int, excluded: frozenset[tuple] = frozenset()) -> Scene:
    """Scene number `index` of the training stream `seed`; never one whose key is in `excluded`."""
    rng = np.random.default_rng([seed, index])
    while True:
        scene = _random_scene(rng)
        if scene.key not in excluded:
            return scene


def render(scene: Scene, seed: int) -> np.ndarray:
    """The picture of `scene`: (SIZE, SIZE, 3) uint8. `seed` sets the sizes and the jitter of the shapes."""
    rng = np.random.default_rng(seed)
    big = SIZE * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    cell = SIZE / 3
    for obj in scene.objects:
        row, column = obj.place
        radius = rng.uniform(*RADIUS)
        centre_x, centre_y = ((column + 0.5) * cell, (row + 0.5) * cell) + rng.uniform(-JITTER, JITTER, size=2)
        points = _outline(obj.shape, centre_x * SUPERSAMPLE, centre_y * SUPERSAMPLE, radius * SUPERSAMPLE)
        draw.polygon(points, fill=COLOURS[obj.colour])
    return np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BOX))


def _outline(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    """Polygon corners of a shape of circumradius-like size r centred on (x, y), in pixels (y down)."""
    if shape == "circle":
        corners, radii, turn = 48, [r], 0.0
    elif shape == "square":
        corners, radii, turn = 4, [r * 1.25], math.pi / 4  # side 1.77 r: about the circle's area
    elif shape == "triangle":
        corners, radii, turn = 3, [r * 1.3], -math.pi / 2  # pointing up
    elif shape == "star":
        corners, radii, turn = 10, [r * 1.35, r * 0.6], -math.pi / 2  # five points, pointing up
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}.")
    step = 2 * math.pi / corners
    return [
        (x + radii[i % len(radii)] * math.cos(turn + i * step), y + radii[i % len(radii)] * math.sin(turn + i * step))
        for i in range(corners)
    ]
