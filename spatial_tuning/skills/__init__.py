"""The skills registry: each skill is a small function from a rendered scene and an rng to a question draft.

Skills cover the three VST-P scenarios (single image, multi-image, video) on procedural scenes, and
manipulation skills on MetaWorld scenes (`manipulation.MANIPULATION_SKILLS`); `SKILLS` maps a name to its
function, in registration order (the order reports list them in).
"""

from __future__ import annotations

# Importing the skill modules registers their skills.
from spatial_tuning.skills import manipulation, multi_image, single_image, single_image_layout, video  # noqa: F401
from spatial_tuning.skills.base import Draft, SceneContext, SkillFn, finalize
from spatial_tuning.skills.registry import SKILLS, register, select_skills

__all__ = ["SKILLS", "Draft", "SceneContext", "SkillFn", "finalize", "register", "select_skills"]
