"""Procedural tabletop scenes: a table on a floor, 3-10 named primitive objects, lights and cameras.

A `Scene` is plain data (objects, camera poses) that turns into MJCF; `generate_scene` samples one from an
rng, so the same seed gives the same scene. Objects are static (no joints): their poses are exact by
construction and no physics step is needed. Labels ("red cube", "blue cylinder") are unique per scene so
questions can name objects unambiguously.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mujoco
import numpy as np

from sim.camera import CameraPose

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.1, 0.1), "green": (0.1, 0.7, 0.2), "blue": (0.1, 0.25, 0.9), "yellow": (0.95, 0.85, 0.1),
    "orange": (1.0, 0.5, 0.05), "purple": (0.55, 0.15, 0.75), "cyan": (0.1, 0.8, 0.85), "pink": (1.0, 0.5, 0.7),
    "white": (0.95, 0.95, 0.95), "black": (0.08, 0.08, 0.08),
}
SHAPES = ("box", "sphere", "cylinder", "capsule")
TABLE_HALF = (0.6, 0.45)  # table top half extents (metres); its surface is the plane z = 0
TABLE_COLOR = (0.55, 0.45, 0.35)


@dataclass
class SceneObject:
    """A primitive object: MuJoCo `size` parameters, world position of its centre, orientation quaternion."""

    color: str
    shape: str
    size: tuple[float, ...]
    position: tuple[float, float, float]
    quat: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)

    @property
    def shape_word(self) -> str:
        """How a person names the shape ("cube" for a box with equal sides)."""
        if self.shape == "box" and max(self.size) - min(self.size) < 0.005:
            return "cube"
        return self.shape

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape_word}"

    @property
    def body(self) -> str:
        return self.label.replace(" ", "_")

    def mjcf(self) -> str:
        r, g, b = COLORS[self.color]
        pos = " ".join(f"{v:.5f}" for v in self.position)
        quat = " ".join(f"{v:.6f}" for v in self.quat)
        size = " ".join(f"{v:.5f}" for v in self.size)
        return (f'<body name="{self.body}" pos="{pos}" quat="{quat}"><geom name="{self.body}_geom" '
                f'type="{self.shape}" size="{size}" rgba="{r} {g} {b} 1"/></body>')


@dataclass
class Scene:
    """A tabletop scene: objects and named camera poses."""

    scene_id: str
    objects: list[SceneObject]
    cameras: list[CameraPose] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def camera(self, name: str) -> CameraPose:
        return next(c for c in self.cameras if c.name == name)

    @property
    def bodies(self) -> dict[str, str]:
        """Object label -> MuJoCo body name, for the ground-truth extraction."""
        return {o.label: o.body for o in self.objects}

    def mjcf(self) -> str:
        """The scene as an MJCF document (shadows off; the offscreen buffer fits every camera)."""
        size = max([c.width for c in self.cameras] + [c.height for c in self.cameras] + [64])
        tr, tg, tb = TABLE_COLOR
        return f"""<mujoco model="{self.scene_id}">
  <visual><quality shadowsize="0"/><global offwidth="{size}" offheight="{size}"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.5 0.5 0.5" specular="0.1 0.1 0.1"/></visual>
  <asset><texture type="skybox" builtin="gradient" rgb1="0.75 0.8 0.88" rgb2="0.35 0.38 0.45" width="64" height="64"/></asset>
  <worldbody>
    <light pos="0.4 -0.6 2.0" dir="-0.2 0.3 -1" diffuse="0.5 0.5 0.5" castshadow="false"/>
    <light pos="-0.8 0.5 1.8" dir="0.4 -0.2 -1" diffuse="0.25 0.25 0.25" castshadow="false"/>
    <geom name="floor" type="plane" pos="0 0 -0.75" size="4 4 0.1" rgba="0.3 0.32 0.36 1"/>
    <geom name="table" type="box" pos="0 0 -0.03" size="{TABLE_HALF[0]} {TABLE_HALF[1]} 0.03" rgba="{tr} {tg} {tb} 1"/>
    {chr(10).join('    ' + o.mjcf() for o in self.objects)}
    {chr(10).join('    ' + c.mjcf() for c in self.cameras)}
  </worldbody>
</mujoco>"""

    def build(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        """Compile the scene and run forward kinematics (cameras and objects placed)."""
        model = mujoco.MjModel.from_xml_string(self.mjcf())
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)
        return model, data


def _quat_about(axis: str, angle: float) -> tuple[float, float, float, float]:
    half = angle / 2.0
    c, s = math.cos(half), math.sin(half)
    return {"x": (c, s, 0.0, 0.0), "y": (c, 0.0, s, 0.0), "z": (c, 0.0, 0.0, s)}[axis]


def _quat_mul(a, b) -> tuple[float, float, float, float]:
    out = np.zeros(4)
    mujoco.mju_mulQuat(out, np.asarray(a, float), np.asarray(b, float))
    return tuple(float(v) for v in out)


def sample_object(rng: np.random.Generator, color: str, shape: str) -> tuple[SceneObject, float]:
    """An object resting on the table at the origin, and its footprint radius."""
    yaw = _quat_about("z", float(rng.uniform(-math.pi, math.pi)))
    if shape == "box":
        half = (rng.uniform(0.02, 0.07, size=3) if rng.random() < 0.7 else np.full(3, rng.uniform(0.025, 0.06)))
        size, z, radius, quat = tuple(half), half[2], float(np.hypot(half[0], half[1])), yaw
    elif shape == "sphere":
        r = float(rng.uniform(0.025, 0.07))
        size, z, radius, quat = (r,), r, r, yaw
    else:
        r, h = float(rng.uniform(0.02, 0.05)), float(rng.uniform(0.03, 0.1))
        cap = r if shape == "capsule" else 0.0
        if rng.random() < 0.3:  # lying on its side
            size, z, radius = (r, h), r, h + cap
            quat = _quat_mul(yaw, _quat_about("x", math.pi / 2))
        else:
            size, z, radius, quat = (r, h), h + cap, r, yaw
    return SceneObject(color, shape, tuple(float(v) for v in size), (0.0, 0.0, float(z)), quat), radius


def place_objects(rng: np.random.Generator, count: int, margin: float = 0.015) -> list[SceneObject]:
    """`count` objects with unique colour+shape labels at non-overlapping spots on the table."""
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    chosen = rng.choice(len(pairs), size=count, replace=False)
    placed: list[tuple[SceneObject, float]] = []
    for index in chosen:
        color, shape = pairs[index]
        for _ in range(200):
            obj, radius = sample_object(rng, color, shape)
            x = rng.uniform(-TABLE_HALF[0] + radius + 0.05, TABLE_HALF[0] - radius - 0.05)
            y = rng.uniform(-TABLE_HALF[1] + radius + 0.05, TABLE_HALF[1] - radius - 0.05)
            if all(math.dist((x, y), other.position[:2]) > radius + r + margin for other, r in placed):
                obj.position = (float(x), float(y), obj.position[2])
                placed.append((obj, radius))
                break
    labels = {o.label for o, _ in placed}
    assert len(labels) == len(placed), "labels must be unique"  # a box may be named cube; colours differ
    return [o for o, _ in placed]


def orbit_camera(rng: np.random.Generator, name: str, size: int, azimuth: float) -> CameraPose:
    """A camera on a sphere around the table centre, looking near the centre from above the table."""
    elevation = math.radians(rng.uniform(25, 55))
    distance = rng.uniform(1.0, 1.5)
    target = np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.08, 0.08), 0.02])
    offset = distance * np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                                  math.sin(elevation)])
    return CameraPose.look_at(name, target + offset, target, float(rng.uniform(45, 60)), size, size)


def occluding_camera(rng: np.random.Generator, name: str, size: int, front: SceneObject,
                     back: SceneObject) -> CameraPose:
    """A low camera looking past `front` at `back`, slightly off their line, so `front` partly hides `back`."""
    a, b = np.asarray(front.position), np.asarray(back.position)
    heading = math.atan2(a[1] - b[1], a[0] - b[0]) + math.radians(rng.uniform(4, 12)) * rng.choice([-1, 1])
    distance, elevation = rng.uniform(0.8, 1.2), math.radians(rng.uniform(8, 20))
    offset = distance * np.array([math.cos(elevation) * math.cos(heading), math.cos(elevation) * math.sin(heading),
                                  math.sin(elevation)])
    return CameraPose.look_at(name, a + offset, (a + b) / 2, float(rng.uniform(45, 60)), size, size)


MOTIONS = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1), "forward": (2, 1), "backward": (2, -1)}


def motion_camera(rng: np.random.Generator, base: CameraPose, name: str) -> tuple[CameraPose, str, float]:
    """`base` translated along one of its own axes (the motion a camera-motion question asks about)."""
    motion = str(rng.choice(list(MOTIONS)))
    axis, sign = MOTIONS[motion]
    # Y is down in the VST frame, so moving "up" is along -Y.
    step = float(rng.uniform(0.15, 0.35))
    position = base.position + sign * step * base.rotation[:, axis]
    return CameraPose(name, position, base.rotation.copy(), base.fovy, base.width, base.height), motion, step


def pan_cameras(rng: np.random.Generator, size: int, frames: int, prefix: str = "video") -> list[CameraPose]:
    """A camera standing at one side of the table and panning across it (a video's frames)."""
    azimuth = float(rng.uniform(-math.pi, math.pi))
    side = np.array([math.cos(azimuth), math.sin(azimuth)])
    across = np.array([-side[1], side[0]])
    position = np.array([*(side * rng.uniform(0.7, 0.9)), rng.uniform(0.45, 0.65)])
    sweep = float(rng.uniform(0.45, 0.6)) * (1 if rng.random() < 0.5 else -1)
    fovy = float(rng.uniform(35, 45))
    cams = []
    for k, t in enumerate(np.linspace(-1.0, 1.0, frames)):
        target = np.array([*(across * sweep * t - side * 0.15), 0.02])
        cams.append(CameraPose.look_at(f"{prefix}_{k}", position, target, fovy, size, size))
    return cams


def pick_pair(rng: np.random.Generator, objects: list[SceneObject]) -> tuple[SceneObject, SceneObject]:
    i, j = rng.choice(len(objects), size=2, replace=False)
    return objects[int(i)], objects[int(j)]


def generate_scene(rng: np.random.Generator, scene_id: str, image_size: int = 224, n_objects=(3, 10),
                   views: int = 4, video_frames: int = 4, motions: int = 2) -> Scene:
    """A random scene with `views` orbit cameras plus one low view where an object partly hides another,
    translated copies `motion_k` of the first `motions` views (camera motion) and a panning video of
    `video_frames` frames."""
    objects = place_objects(rng, int(rng.integers(n_objects[0], n_objects[1] + 1)))
    start = float(rng.uniform(-math.pi, math.pi))
    cameras = [orbit_camera(rng, f"view_{i}", image_size, start + i * 2 * math.pi / views + rng.uniform(-0.4, 0.4))
               for i in range(views)]
    if len(objects) >= 2:  # one more view, aimed so that one object partly hides another
        front, back = pick_pair(rng, objects)
        cameras.append(occluding_camera(rng, f"view_{views}", image_size, front, back))
    moved = {}
    for k in range(min(motions, views)):
        camera, motion, step = motion_camera(rng, cameras[k], f"motion_{k}")
        cameras.append(camera)
        moved[camera.name] = {"from": f"view_{k}", "motion": motion, "distance": round(step, 3)}
    cameras += pan_cameras(rng, image_size, video_frames)
    return Scene(scene_id, objects, cameras, info={"motions": moved, "views": views, "video_frames": video_frames})
