"""`vst-vla demo`: the main job on the embedded default.

Builds the tiny Qwen2.5-VL, saves it, loads it back through `load_backbone`, renders a MuJoCo scene offscreen
and generates an answer to a spatial question about it. (The full chain is `vst-vla pipeline`.)
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from vst_vla.backbone import load_backbone, save_backbone
from vst_vla.hydra_run import resolve_out, setup_torch
from vst_vla.runtime import select_mujoco_renderer

log = logging.getLogger(__name__)

DEMO_SCENE = """
<mujoco model="demo">
  <visual><quality shadowsize="0"/><headlight ambient="0.4 0.4 0.4" diffuse="0.6 0.6 0.6"/></visual>
  <worldbody>
    <light pos="0 0 2" dir="0 0 -1" castshadow="false"/>
    <geom name="table" type="box" size="0.6 0.6 0.02" rgba="0.75 0.65 0.5 1"/>
    <geom name="red_box" type="box" pos="0.1 -0.15 0.07" size="0.05 0.05 0.05" rgba="0.9 0.1 0.1 1"/>
    <geom name="blue_sphere" type="sphere" pos="-0.15 0.25 0.08" size="0.06" rgba="0.1 0.2 0.9 1"/>
    <camera name="front" pos="0 -0.9 0.55" xyaxes="1 0 0 0 0.5 0.866" fovy="50"/>
  </worldbody>
</mujoco>
"""


def render_demo_scene(size: int) -> Image.Image:
    """Render the demo scene from its front camera (offscreen, no shadows)."""
    import mujoco

    model = mujoco.MjModel.from_xml_string(DEMO_SCENE)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    renderer = mujoco.Renderer(model, size, size)
    try:
        renderer.update_scene(data, camera="front")
        pixels = renderer.render()
    finally:
        renderer.close()
    return Image.fromarray(np.asarray(pixels))


def answer_question(model, processor, image: Image.Image, question: str, max_new_tokens: int) -> str:
    """Greedy answer of `model` to `question` about `image`."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], images=[image], return_tensors="pt").to(model.device)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]


def run(cfg: DictConfig) -> str:
    setup_torch(cfg)
    out = resolve_out(cfg)
    renderer = select_mujoco_renderer()
    started = time.perf_counter()
    model, processor = load_backbone(OmegaConf.to_container(cfg.model, resolve=True))
    saved = save_backbone(model, processor, out / "backbone")
    model, processor = load_backbone(dict(OmegaConf.to_container(cfg.model, resolve=True), source=str(saved)))
    image = render_demo_scene(cfg.image_size)
    image.save(out / "scene.png")
    answer = answer_question(model, processor, image, cfg.question, cfg.max_new_tokens)
    print(f"renderer: {renderer}; backbone saved to and reloaded from {saved}")
    print(f"image: {out / 'scene.png'}")
    print(f"question: {cfg.question}")
    print(f"answer (tiny, untrained): {answer!r}")
    print(f"done in {time.perf_counter() - started:.1f}s")
    return answer
