"""Why a data row is rejected or repaired: the reason names the readers count, and the error rows raise.

Row-level code (turn repair, placeholders, image paths, ground truth) raises `RowProblem(reason, detail)`
without knowing which file it is reading; the reader turns it into a `BadSampleError` that names the file and
the row. Repairs are the odd rows VST itself fixes silently; we fix them the same way and count them.
"""

from __future__ import annotations

# Rejections (a row with one of these is an error, or skipped and counted with on_bad_sample=skip).
MISSING_IMAGE = "missing_image"
UNDECODABLE_IMAGE = "undecodable_image"
UNSAFE_IMAGE_PATH = "unsafe_image_path"
IMAGE_COUNT_MISMATCH = "image_count_mismatch"
VIDEO_COUNT_MISMATCH = "video_count_mismatch"
EMPTY_CONVERSATION = "empty_conversation"
NON_ALTERNATING_CONVERSATION = "non_alternating_conversation"
NON_STRING_VALUE = "non_string_value"
BAD_META_INFO = "bad_meta_info"
EMPTY_ANSWER = "empty_answer"
UNKNOWN_REWARD_MODE = "unknown_reward_mode"
ANSWER_NOT_CHOICE = "answer_not_choice"
ANSWER_NOT_NUMBER = "answer_not_number"
ANSWER_NOT_BOXES = "answer_not_boxes"
REASONS = (MISSING_IMAGE, UNDECODABLE_IMAGE, UNSAFE_IMAGE_PATH, IMAGE_COUNT_MISMATCH, VIDEO_COUNT_MISMATCH,
           EMPTY_CONVERSATION, NON_ALTERNATING_CONVERSATION, NON_STRING_VALUE, BAD_META_INFO, EMPTY_ANSWER,
           UNKNOWN_REWARD_MODE, ANSWER_NOT_CHOICE, ANSWER_NOT_NUMBER, ANSWER_NOT_BOXES)

# Repairs (the row is kept, changed the way VST's loader changes it, and counted in the report).
DROPPED_LEADING_TURN = "dropped_leading_non_human_turn"
DROPPED_EMPTY_TURN = "dropped_empty_turn"
DROPPED_UNKNOWN_ROLE_TURN = "dropped_unknown_role_turn"
PREPENDED_PLACEHOLDERS = "prepended_placeholders"
REPAIRS = (DROPPED_LEADING_TURN, DROPPED_EMPTY_TURN, DROPPED_UNKNOWN_ROLE_TURN, PREPENDED_PLACEHOLDERS)


class RowProblem(ValueError):
    """A row that cannot become a valid sample, for `reason` (one of `REASONS`); the reader adds file and row."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")
