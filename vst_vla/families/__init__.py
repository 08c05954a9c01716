"""Backbone families: one module per architecture line, one interface (`base.BackboneFamily`), one registry."""

from vst_vla.families import qwen2_5_vl, qwen3_5, qwen3_vl  # noqa: F401  (each module registers its family)
from vst_vla.families.base import (
    BackboneFamily,
    RopePositions,
    families,
    family_for_model_type,
    family_of,
    get_family,
    supported_model_types,
    tiny_family,
)

__all__ = ["BackboneFamily", "RopePositions", "families", "family_for_model_type", "family_of", "get_family",
           "supported_model_types", "tiny_family"]
