"""Action heads on the VLM backbone: `tokens` (the paper's discrete bins), `l1_chunk` (OFT-style parallel
L1 chunks) and `flow` (a flow-matching action expert). Each is an `ActionHead` built from the policy config."""

from policies.heads.base import ActionHead, build_head

__all__ = ["ActionHead", "build_head"]
