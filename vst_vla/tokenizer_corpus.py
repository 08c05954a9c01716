"""Text the tiny preset's tokenizer is trained on, offline.

The tiny tokenizer only has to segment the text this project produces (spatial questions and answers, robot
instructions, think traces, JSON 3D boxes), so its corpus is built from those words and templates. The corpus
is deterministic: the same words in the same order give the same merges.
"""

from __future__ import annotations

import itertools
import random

WORDS = """
the a an of to in on at by for with from and or not is are was be which what where how many much closer
farther closest farthest left right above below behind front between near far nearest object objects camera
image images frame frames video scene table floor wall box cube sphere ball cylinder capsule block bowl cup mug
plate bottle can red green blue yellow orange purple pink white black gray grey brown cyan magenta small large
big tall short wide narrow long height width depth size distance metres meters meter centimetres cm m degrees
count number there how question answer options option choose select letter correct first second third last
appears appear order sequence moved moves motion rotate rotated rotation translate forward backward up down
clockwise counterclockwise pan tilt zoom view views same different relation relative direction located position
think reasoning so therefore because since thus compare estimate approximately about exactly total visible
occluded hidden partially centre center corner edge top bottom side label bbox bbox_3d json x y z x_size y_size
z_size pitch yaw roll robot action should take arm gripper open close grasp pick place push pull reach door
drawer window button press lever handle peg insert plug faucet turn slide sweep hammer nail basketball hoop
shelf bin coffee soccer goal stick dial disassemble assemble nut wrench puck goal target location task episode
step what action should the robot take to pick up the object and place it at the goal
""".split()  # noqa: SIM905 (a word list reads better as text)

TEMPLATES = [
    "Which object is closer to the camera, the {c1} {o1} or the {c2} {o2}?",
    "How far is the {c1} {o1} from the camera? Answer in metres.",
    "What is the distance between the {c1} {o1} and the {c2} {o2} in metres?",
    "How many {o1}s are in the image?",
    "Is the {c1} {o1} to the left or right of the {c2} {o2}?",
    "Output the 3D bounding box of the {c1} {o1} in the camera frame as JSON.",
    ("<think>The {c1} {o1} is at depth {n1}.{n2} m and the {c2} {o2} at {n3}.{n4} m, so the {o1} is closer."
     "</think> ({L})"),
    '```json\n[{{"label": "{c1} {o1}", "bbox_3d": [{n1}.{n2}, -0.{n3}, {n4}.{n1}, 0.{n2}, 0.{n3}, 0.{n4}, 0.0, -0.{n1}, 0.0]}}]\n```',
    "What action should the robot take to {verb} the {c1} {o1}?",
    "Options: (A) {c1} {o1} (B) {c2} {o2} (C) both (D) neither. Answer with the option's letter.",
    "The answer is {L}. The height is {n1}.{n2} m, about {n3}{n4} cm.",
]


def tokenizer_corpus(seed: int = 0, repeats: int = 40) -> list[str]:
    """Deterministic training lines for the tiny BPE tokenizer."""
    rng = random.Random(seed)
    colours = [w for w in WORDS if w in {"red", "green", "blue", "yellow", "orange", "purple", "white", "black", "gray"}]
    objects = ["box", "cube", "sphere", "ball", "cylinder", "capsule", "block", "bowl", "cup", "mug", "bottle"]
    verbs = ["pick up", "push", "reach", "open", "close", "press", "slide", "turn"]
    lines = [" ".join(WORDS[i:i + 12]) for i in range(0, len(WORDS), 12)]
    lines.append("0123456789 0.5 1.25 -0.75 10 100 3.14 % , . : ; ( ) [ ] { } \" ' ? ! - + = / _ < > |")
    for _ in range(repeats):
        for template in TEMPLATES:
            c1, c2 = rng.sample(colours, 2)
            o1, o2 = rng.sample(objects, 2)
            lines.append(template.format(c1=c1, c2=c2, o1=o1, o2=o2, verb=rng.choice(verbs), L=rng.choice("ABCD"),
                                         n1=rng.randint(0, 9), n2=rng.randint(0, 99), n3=rng.randint(0, 9),
                                         n4=rng.randint(0, 9)))
    lines += [" ".join(p) for p in itertools.islice(itertools.permutations(WORDS[:30], 3), 400)]
    return lines
