"""Small synthetic spatial samples for SFT tests and benchmarks (the data engine's `vst-vla synth` makes the real
ones): coloured squares drawn with PIL, one to three images per sample, questions of varied length, answers that
follow from the pictures, and a share of chain-of-thought (`*_thought`) samples.
"""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw

from spatial_tuning.sample import SpatialSample

_COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (230, 200, 20)}
_FILLER = ("Look carefully at the picture.", "The camera looks straight ahead.", "Answer with one colour name.",
           "Ignore the background.", "Consider only the squares.")


def _square_image(rng: random.Random, size: int) -> tuple[bytes, dict[str, int]]:
    """A grey image with two coloured squares; returns PNG bytes and each colour's x centre."""
    width = rng.choice([size, size + 28, size + 56])
    image = Image.new("RGB", (width, size), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    names = rng.sample(sorted(_COLOURS), 2)
    side = size // 4
    slots = rng.sample(range(0, width - side, side), 2)  # distinct columns, so "further left" is well defined
    centres = {}
    for name, x in zip(names, slots):
        y = rng.randrange(0, size - side)
        draw.rectangle([x, y, x + side - 1, y + side - 1], fill=_COLOURS[name])
        centres[name] = x + side // 2
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), centres


def toy_spatial_sample(index: int, rng: random.Random, image_size: int = 64, max_images: int = 3,
                       thought: bool = False) -> SpatialSample:
    """One sample asking which square is further left in the last of its images."""
    n_images = rng.randint(1, max_images)
    images, centres = zip(*(_square_image(rng, image_size) for _ in range(n_images)))
    last = centres[-1]
    a, b = sorted(last)
    left = min(last, key=last.get)
    filler = " ".join(rng.sample(_FILLER, rng.randint(0, len(_FILLER))))
    question = "<image>\n" * n_images + f"{filler} In the last image, which square is further left, {a} or {b}?"
    answer = left
    if thought:
        # The reasoning walks through every image (so its length grows with the image count, as real CoT varies).
        steps = " ".join(f"In image {k + 1} the {name} square is centred at x={x}."
                         for k, image_centres in enumerate(centres) for name, x in sorted(image_centres.items()))
        answer = f"<think>{steps} Only the last image matters, and smaller x is further left.</think> {left}"
    return SpatialSample(id=f"toy-{index}", conversations=[{"from": "human", "value": question.strip()},
                                                           {"from": "gpt", "value": answer}],
                         images=list(images), type="relation_thought" if thought else "relation",
                         data_source="toy", meta_info={"mode": ["vqa_score"], "answer": left, "skill": "relation"})


def toy_spatial_samples(n: int, seed: int = 0, image_size: int = 64, max_images: int = 3,
                        thought_fraction: float = 0.3) -> list[SpatialSample]:
    """`n` toy samples; about `thought_fraction` of them are chain-of-thought samples."""
    rng = random.Random(seed)
    return [toy_spatial_sample(i, rng, image_size, max_images, thought=rng.random() < thought_fraction)
            for i in range(n)]
