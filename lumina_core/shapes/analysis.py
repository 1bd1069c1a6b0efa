"""Does a picture show what its shapes caption asks for? Colour masks and centroids, nothing learned.

Each pixel takes the nearest of the data set's shape and background colours (in RGB), or none when it is
far from all of them (blended edges). A caption's object is found when the largest 4-connected blob of its
colour covers at least MIN_AREA pixels and its centroid lies in the named cell of the 3x3 grid. The shape
itself is not checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .dataset import BACKGROUNDS, COLOURS, SIZE, Scene, ShapeObject

PALETTE = {**COLOURS, **BACKGROUNDS}
MAX_DISTANCE = 70.0  # RGB distance beyond which a pixel is no palette colour
MIN_AREA = 25  # pixels; a drawn shape covers 100 to 280


@dataclass(frozen=True)
class Finding:
    obj: ShapeObject
    area: int  # pixels in the largest blob of the object's colour (0: none)
    cell: tuple[int, int] | None  # the grid cell of that blob's centroid

    @property
    def found(self) -> bool:
        return self.area >= MIN_AREA and self.cell == self.obj.place


def colour_labels(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) int: the index into PALETTE of each pixel's nearest colour, -1 for none."""
    palette = np.array(list(PALETTE.values()), dtype=np.float32)  # (P, 3)
    distance = np.linalg.norm(image.astype(np.float32)[:, :, None] - palette, axis=-1)  # (H, W, P)
    labels = distance.argmin(axis=-1)
    return np.where(distance.min(axis=-1) <= MAX_DISTANCE, labels, -1)


def largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a (H, W) bool mask, as a mask (all False when there is none)."""
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        region, frontier = [start], [start]
        while frontier:
            y, x = frontier.pop()
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    region.append((ny, nx))
                    frontier.append((ny, nx))
        if len(region) > len(best):
            best = region
    blob = np.zeros_like(mask)
    if best:
        blob[tuple(np.array(best).T)] = True
    return blob


def find_objects(image: np.ndarray, scene: Scene) -> list[Finding]:
    """Look for each of the scene's objects in a (SIZE, SIZE, 3) uint8 picture."""
    if image.shape != (SIZE, SIZE, 3):
        raise ValueError(f"expected a ({SIZE}, {SIZE}, 3) picture, got {image.shape}.")
    labels = colour_labels(image)
    findings = []
    for obj in scene.objects:
        blob = largest_blob(labels == list(PALETTE).index(obj.colour))
        area = int(blob.sum())
        cell = None
        if area:
            ys, xs = np.nonzero(blob)
            cell = (int(ys.mean() * 3 // SIZE), int(xs.mean() * 3 // SIZE))
        findings.append(Finding(obj, area, cell))
    return findings


def matches(image: np.ndarray, scene: Scene) -> bool:
    """Whether every object of the caption is found in its named place."""
    return all(finding.found for finding in find_objects(image, scene))


def semantic_score(images: Sequence[np.ndarray], scenes: Sequence[Scene]) -> float:
    """The fraction of pictures that match their scenes."""
    return sum(matches(image, scene) for image, scene in zip(images, scenes, strict=True)) / len(scenes)
