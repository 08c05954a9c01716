"""Name -> skill function, filled by the `@register` decorator in the skill modules."""

from __future__ import annotations

from collections.abc import Iterable

from spatial_tuning.skills.base import SkillFn

SKILLS: dict[str, SkillFn] = {}
SCENARIO_OF: dict[str, str] = {}
SCENES_OF: dict[str, str] = {}  # "procedural" (sim.procedural_scene) or "metaworld" (sim.manipulation_scene)
_SCENARIO_ORDER = ("single_image", "multi_image", "video")


def register(name: str, scenario: str, scenes: str = "procedural"):
    """Register a skill function under `name` (its scenario is recorded for reports; `scenes` says which scenes
    it asks about: procedural ones or MetaWorld manipulation states)."""

    def wrap(fn: SkillFn) -> SkillFn:
        if name in SKILLS:
            raise ValueError(f"skill {name!r} registered twice")
        SKILLS[name], SCENARIO_OF[name], SCENES_OF[name] = fn, scenario, scenes
        return fn

    return wrap


def select_skills(names: Iterable[str] | str | None = None) -> dict[str, SkillFn]:
    """The skills named, single-image first, then multi-image, video. None or "all": every registered skill;
    "procedural" / "metaworld": the skills asking about that kind of scene (the embedded default uses only the
    procedural ones, whose scenes render in milliseconds; a MetaWorld scene costs seconds to build)."""
    ordered = sorted(SKILLS, key=lambda n: _SCENARIO_ORDER.index(SCENARIO_OF[n]))
    if names is None or names == "all" or list(names) == ["all"]:
        return {n: SKILLS[n] for n in ordered}
    names = [names] if isinstance(names, str) else list(names)
    if len(names) == 1 and names[0] in set(SCENES_OF.values()):
        return {n: SKILLS[n] for n in ordered if SCENES_OF[n] == names[0]}
    unknown = [n for n in names if n not in SKILLS]
    if unknown:
        raise KeyError(f"unknown skill(s) {unknown}; registered: {', '.join(SKILLS)}")
    return {n: SKILLS[n] for n in ordered if n in names}
