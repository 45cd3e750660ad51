"""The ShapesWorld vocabulary: shapes, colors, backgrounds, styles, grid positions.

Defaults were chosen to stay unmistakable at 32x32 (measured: a diamond reads as round at ~7 px, pink/red and
cyan/blue get confused by small models, objects of ~0.4 of a cell's width learn fastest). Everything is a field of
``WorldConfig`` so harder worlds are one config away.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RGB = tuple[int, int, int]

OBJECT_COLORS: dict[str, RGB] = {
    "red": (225, 35, 35),
    "green": (30, 185, 55),
    "blue": (35, 75, 235),
    "yellow": (250, 220, 30),
    "purple": (150, 50, 205),
    "orange": (250, 135, 20),
    # extra colors for harder worlds (not in the default vocabulary)
    "pink": (245, 120, 190),
    "cyan": (40, 210, 225),
    "white": (250, 250, 250),
}
BACKGROUND_COLORS: dict[str, RGB] = {
    "black": (18, 18, 18),
    "white": (242, 242, 238),
    "gray": (120, 120, 120),
    "teal": (10, 95, 100),
    "brown": (105, 65, 35),
    "beige": (225, 205, 160),
}
ALL_SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon")
# None = plain rendering; the others keep shapes and colors recognizable.
ALL_STYLES = ("outline", "invert", "tint", "scanlines")

POSITION_NAMES_3 = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)


@dataclass(frozen=True)
class WorldConfig:
    """Vocabulary and geometry of one world. ``grid`` x ``grid`` slots; objects of ``size`` of a cell's width."""

    shapes: tuple[str, ...] = ("circle", "square", "triangle", "star")
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
    backgrounds: tuple[str, ...] = ("black", "white", "gray", "teal", "brown")
    styles: tuple[str, ...] = ALL_STYLES
    grid: int = 3
    size: float = 0.42          # object width as a fraction of a cell
    size_jitter: float = 0.04   # +- uniform
    pos_jitter: float = 0.07    # +- uniform, fraction of a cell
    max_objects: int = 3        # most objects in a T2I scene
    counts: tuple[int, ...] = (2, 3)  # numbers used by counting prompts
    resolution: int = 32
    supersample: int = 4
    style_prob: float = 0.15    # how often a T2I scene or edit source carries a style
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        for s in self.shapes:
            if s not in ALL_SHAPES:
                raise ValueError(f"unknown shape {s!r}; expected one of {ALL_SHAPES}")
        for c in self.colors:
            if c not in OBJECT_COLORS:
                raise ValueError(f"unknown object color {c!r}; expected one of {tuple(OBJECT_COLORS)}")
        for b in self.backgrounds:
            if b not in BACKGROUND_COLORS:
                raise ValueError(f"unknown background {b!r}; expected one of {tuple(BACKGROUND_COLORS)}")
        for s in self.styles:
            if s not in ALL_STYLES:
                raise ValueError(f"unknown style {s!r}; expected one of {ALL_STYLES}")
        if len(self.shapes) < 2 or len(self.colors) < 2 or len(self.backgrounds) < 2:
            raise ValueError("a world needs at least 2 shapes, 2 colors and 2 backgrounds")
        if self.grid < 2:
            raise ValueError("grid must be >= 2")
        if not 1 <= self.max_objects <= self.grid * self.grid - 1:
            raise ValueError(f"max_objects must be in [1, {self.grid * self.grid - 1}]")
        if self.resolution not in (32, 64):
            raise ValueError(f"resolution must be 32 or 64, got {self.resolution}")
        if max(self.counts) > self.grid * self.grid - 1 or min(self.counts) < 2:
            raise ValueError("counts must be >= 2 and leave one free slot")

    @property
    def n_slots(self) -> int:
        return self.grid * self.grid

    def position_names(self) -> tuple[str, ...]:
        if self.grid == 3:
            return POSITION_NAMES_3
        return tuple(f"row {r + 1} column {c + 1}" for r in range(self.grid) for c in range(self.grid))

    def with_resolution(self, resolution: int) -> WorldConfig:
        from dataclasses import replace

        return replace(self, resolution=resolution)


DEFAULT_WORLD = WorldConfig()
