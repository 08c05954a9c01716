"""Can a backbone preset learn the primitives every spatial question is built of? Five synthetic probes, each
trained from a fresh backbone with an experiment's SFT recipe for the same number of steps and scored greedily on
held-out images (coloured squares on grey, one square per quadrant at most):

  colour           "What colour is the square?"                   the image alone decides the answer
  colour_word      the same, answered with the colour's name      the image read out as a word of the vocabulary
  position         "Which quadrant is the square in?"             where something is, read from the image
  colour_present   "Is there a <colour> square?"                  a word of the question matched to the image
  colour_position  "Which quadrant is the <colour> square in?"    both: the binding a spatial question needs

    .venv/bin/python bench/learnability.py --experiment small --steps 150            # ~10 min a probe, 2 CPU cores
    .venv/bin/python bench/learnability.py --experiment small --probes position --steps 1000 --pack 512 \
        --image-size 56     # one token per quadrant: a plateau of 400-700 steps, learned in some runs (README)

A skill such as "which of these objects is closest to the camera" needs `colour_position`: a preset that cannot
learn it within a budget will not learn those skills within it either (see the README's "small experiment").
Every budget is steps; the table gives held-out accuracy against chance and the held-out loss before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spatial_tuning.sample import IMAGE_PLACEHOLDER, SpatialSample

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 60, 230), "yellow": (230, 220, 30),
           "white": (250, 250, 250), "black": (10, 10, 10)}
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
LETTERS = "ABCDEF"


def draw(rng: np.random.Generator, colours: list[str], size: int, side: int) -> tuple[bytes, list[int]]:
    """A grey PNG with one `side`-pixel square of each colour in distinct random quadrants; their quadrants."""
    image = np.full((size, size, 3), 128, np.uint8)
    quadrants = [int(q) for q in rng.permutation(4)[:len(colours)]]
    half = size // 2
    for quadrant, colour in zip(quadrants, colours):
        top, left = (quadrant // 2) * half, (quadrant % 2) * half
        y = int(rng.integers(top + 2, top + half - side - 1))
        x = int(rng.integers(left + 2, left + half - side - 1))
        image[y:y + side, x:x + side] = COLOURS[colour]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue(), quadrants


def _row(probe: str, k: int, png: bytes, question: str, options: list[str], answer: int,
         lettered: bool = True) -> SpatialSample:
    """A multiple-choice row: options listed and answered by letter, or (`lettered=False`) answered by the option's
    text with the options kept only in `meta_info` for scoring."""
    lettered_options = [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    listing = "\n".join(lettered_options)
    # `<image>`, the stack's placeholder (as in synth and VST rows): the chat template turns it into
    # <|vision_start|><|image_pad|><|vision_end|>. A literal <|image_pad|> would skip the two vision markers.
    prompt = (f"{IMAGE_PLACEHOLDER}\n{question}\nOptions:\n{listing}\nAnswer with the option's letter." if lettered
              else f"{IMAGE_PLACEHOLDER}\n{question}")
    letter = LETTERS[answer]
    return SpatialSample(id=f"{probe}_{k:05d}", images=[png], type="single_image", data_source="learnability_probe",
                         conversations=[{"from": "human", "value": prompt},
                                        {"from": "gpt", "value": letter if lettered else options[answer]}],
                         meta_info={"skill": probe, "mode": "multiple_choice", "scenario": "single_image",
                                    "answer": letter, "options": lettered_options})


def _one_square_colour(probe: str, rng, k, size, side, question: str, lettered: bool) -> SpatialSample:
    names = list(COLOURS)
    answer = int(rng.integers(len(names)))
    png, _ = draw(rng, [names[answer]], size, side)
    return _row(probe, k, png, question, names, answer, lettered=lettered)


def colour(rng, k, size, side):
    return _one_square_colour("colour", rng, k, size, side, "What colour is the square?", lettered=True)


def colour_word(rng, k, size, side):
    return _one_square_colour("colour_word", rng, k, size, side, "What colour is the square? Answer with one word.",
                              lettered=False)


def position(rng, k, size, side):
    png, (quadrant,) = draw(rng, ["white"], size, side)
    return _row("position", k, png, "Which quadrant of the image is the square in?", list(QUADRANTS), quadrant)


def colour_present(rng, k, size, side):
    names = [str(c) for c in rng.permutation(list(COLOURS))]
    png, _ = draw(rng, names[:2], size, side)
    present = bool(rng.random() < 0.5)
    asked = names[int(rng.integers(2))] if present else names[2]
    return _row("colour_present", k, png, f"Is there a {asked} square in the image?", ["yes", "no"],
                0 if present else 1)


def colour_position(rng, k, size, side):
    names = [str(c) for c in rng.permutation(list(COLOURS))[:3]]
    png, quadrants = draw(rng, names, size, side)
    target = int(rng.integers(3))
    return _row("colour_position", k, png, f"Which quadrant of the image is the {names[target]} square in?",
                list(QUADRANTS), quadrants[target])


PROBES: dict[str, tuple[str, Callable]] = {
    "colour": ("the image alone", colour),
    "colour_word": ("the image read out as a word", colour_word),
    "position": ("where, from the image", position),
    "colour_present": ("a question word matched to the image", colour_present),
    "colour_position": ("binding a word to a place", colour_position),
}


def make_split(probe: str, n: int, seed: int, size: int, side: int) -> list[SpatialSample]:
    rng = np.random.default_rng(seed)
    return [PROBES[probe][1](rng, k, size, side) for k in range(n)]


def run_probes(probes: list[str], args: argparse.Namespace, out: Path) -> list[dict]:
    """Train one fresh backbone on `probes` together with the experiment's SFT recipe; each probe's held-out
    accuracy, and the held-out loss of them all."""
    from hydra import compose, initialize_config_dir
    from transformers import set_seed

    from spatial_tuning.eval_spatial import generate_answers, score_answer, skill_metrics
    from spatial_tuning.sft import train_sft
    from vst_vla.backbone import load_backbone
    from vst_vla.hydra_run import setup_torch
    from vst_vla.paths import config_dir

    overrides = [f"experiment={args.experiment}", f"optim.max_steps={args.steps}", f"output_dir={out / '+'.join(probes)}",
                 "save_steps=null", "report_to=[]", f"seed={args.seed}", *args.override]
    if args.pack:
        overrides.append(f"max_tokens_per_pack={args.pack}")
    if args.threads:
        overrides.append(f"trainer.torch_threads={args.threads}")
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name="learnability"):
        cfg = compose(config_name="sft", overrides=overrides)
    setup_torch(cfg)
    set_seed(args.seed)
    # Interleaved, so that a joint run sees every probe from its first step on.
    train = [s for row in zip(*(make_split(p, args.train, args.seed, args.image_size, args.side) for p in probes))
             for s in row]
    test = [s for p in probes for s in make_split(p, args.test, args.seed + 1, args.image_size, args.side)]
    model, processor = load_backbone(cfg.model)
    metrics = train_sft(cfg, model, processor, train, test)
    replies = generate_answers(model, processor, test, batch_size=16, max_new_tokens=8, desc="+".join(probes))
    scores = skill_metrics([score_answer(reply, sample, require_think=False) for reply, sample in zip(replies, test)])
    return [{"probe": p, "accuracy": scores[p]["value"], "chance": scores[p]["chance"], "n": scores[p]["n"],
             "loss_start": metrics.get("eval_loss_start"), "loss_end": metrics.get("eval_loss_end"),
             "steps": metrics["global_step"], "model": cfg.model.name, "trained_with": list(probes)} for p in probes]


def table(results: list[dict]) -> str:
    lines = ["| probe | needs | trained with | chance | accuracy | x chance | held-out loss |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['probe']} | {PROBES[r['probe']][0]} | {' + '.join(r['trained_with'])} | "
                     f"{r['chance']:.3f} | {r['accuracy']:.3f} (n={r['n']}) | {r['accuracy'] / r['chance']:.2f} | "
                     f"{r['loss_start']:.3f} -> {r['loss_end']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="small", help="whose model and SFT recipe (configs/experiment/)")
    parser.add_argument("--probes", nargs="+", default=list(PROBES), choices=list(PROBES))
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per probe (per run with --joint)")
    parser.add_argument("--joint", action="store_true", help="train one backbone on all --probes together "
                        "(does reading colours out as words help match a colour word to the image?)")
    parser.add_argument("--pack", type=int, default=None, help="max_tokens_per_pack (default: the experiment's)")
    parser.add_argument("--train", type=int, default=1500, help="training images per probe")
    parser.add_argument("--test", type=int, default=128, help="held-out images per probe")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--side", type=int, default=16, help="square side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--override", nargs="*", default=[], help="more sft overrides, e.g. ++model.tiny.rope_theta=2; "
                        "model.source=DIR/position/checkpoint-final continues from a kept run (a curriculum)")
    parser.add_argument("--output-dir", default=None, help="keep each run's SFT output in DIR/<probes>/ "
                        "(checkpoint-final loads with model.source=); default: a temporary directory, removed")
    args = parser.parse_args(argv)
    if args.side >= args.image_size // 2 - 3:
        parser.error(f"--side {args.side} does not fit a quadrant of a {args.image_size} px image")

    groups = [list(args.probes)] if args.joint else [[p] for p in args.probes]
    with contextlib.nullcontext(args.output_dir) if args.output_dir else tempfile.TemporaryDirectory() as out:
        results = [r for group in groups for r in run_probes(group, args, Path(out))]
    print(f"learnability: experiment={args.experiment} model={results[0]['model']} {args.steps} steps per run, "
          f"{args.train} training / {args.test} held-out images of {args.image_size} px")
    print(table(results))
    return results


if __name__ == "__main__":
    from vst_vla.errors import debug_requested, describe

    try:
        main()
    except Exception as err:  # a failure is one line, as `vst-vla` prints it (vst_vla.errors)
        if debug_requested():
            raise
        code, line = describe(err, "sft")
        print(f"learnability.py: {line}", file=sys.stderr)
        sys.exit(code)
