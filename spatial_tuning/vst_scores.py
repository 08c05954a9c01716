"""VST's accuracy scores by reward mode, as its RL reward (`projects/spatial_rl/examples/reward_function/`) defines them.

A VST RL row names its scores in `meta_info["mode"]`, a list of `multi_choices_score`, `relaxed_score`, `vqa_score`,
`anls_score`, `math_score` (or `bbox3d`, scored in `box_rewards.py`). The answer is the completion's text after the
last `</think>` (the whole completion when there is none), stripped. Accuracy is 1 for a case-insensitive exact
match with the ground truth, else the best of the row's scores:

- `multi_choices_score`: the first standalone capital A-F (not "A" followed by a word: the article) of each side,
  after unwrapping a ``...`` or `...` span; 1 when both exist and agree;
- `relaxed_score` (ChartQA / pix2struct): within 5 % when both sides read as numbers (`float`, a trailing "%"
  dropped without dividing by 100); a ground truth of 4 characters starting with "20" (a year) and a zero or
  non-numeric one need a case-insensitive exact match;
- `vqa_score`: EvalAI's VQA answer normalisation (punctuation, articles, number words, contractions) then equality;
  with the ground truth repeated ten times, VQA's soft accuracy min(1, matches / 3) is 1 or 0;
- `anls_score`: ANLS, 1 - normalised Levenshtein distance, 0 when the distance is 0.5 or more (DocVQA's tau);
- `math_score`: `math_verify.verify(parse(gt), parse(answer))`.

When the ground truth holds a `\\boxed{...}` and the answer does too, both are replaced by their first boxed content.

Deliberate differences from VST's code, each a bug there: `anls_score` returns the similarity (VST returns the
distance, rewarding wrong answers); `\\boxed{}` content is read with balanced braces (VST's non-greedy regex cuts
`\\boxed{\\frac{1}{2}}` to `\\frac{1`); an error inside one score costs that score only (VST's try/except zeroes the
whole accuracy); an unknown mode is an error naming it (VST's assert is swallowed into accuracy 0).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

RELATIVE_TOLERANCE = 0.05
ANLS_THRESHOLD = 0.5

# --- answer extraction ----------------------------------------------------------------------------------


def answer_after_think(completion: str) -> str:
    """VST's answer: the text after the last `</think>` (the whole completion without one), stripped."""
    return completion.split("</think>")[-1].strip()


def first_boxed(text: str) -> str | None:
    """The content of the first `\\boxed{...}`, braces balanced; None without a complete one."""
    start = text.find("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for index in range(begin, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            if depth == 0:
                return text[begin:index]
            depth -= 1
    return None


# --- multiple choice ------------------------------------------------------------------------------------

# A standalone capital A-F not followed by a space and a letter: "B", "B.", "(B)", "B) text", but not "A red box".
_CHOICE = re.compile(r"\b[A-F]\b(?!\s[a-zA-Z])")


def choice_letter(text: str) -> str | None:
    """The option letter VST reads from `text`, or None. A ``...`` span, then a `...` span, narrows the search."""
    for fence in (r"``([^`]*)``", r"`([^`]*)`"):
        span = re.search(fence, text)
        if span:
            text = span.group(1)
    letter = _CHOICE.search(text)
    return letter.group() if letter else None


def multi_choices_score(answer: str, ground_truth: str) -> float:
    """1.0 when both sides name the same option letter."""
    reference = choice_letter(ground_truth)
    if reference is None:
        log.warning("multi_choices_score: ground truth %r names no option letter A-F", ground_truth[:80])
        return 0.0
    return float(choice_letter(answer) == reference)


# --- relaxed numeric ------------------------------------------------------------------------------------


def relaxed_float(text: str) -> float | None:
    """A number as ChartQA's relaxed accuracy reads it: Python `float`, a trailing "%" removed (not divided)."""
    try:
        return float(text[:-1]) if text.endswith("%") else float(text)
    except ValueError:
        return None


def is_year(ground_truth: str) -> bool:
    """ChartQA's year rule: a 4-character ground truth starting with "20" is compared as text, never as a number."""
    return len(ground_truth) == 4 and ground_truth.startswith("20")


def relaxed_score(answer: str, ground_truth: str, tolerance: float = RELATIVE_TOLERANCE) -> float:
    """1.0 within `tolerance` relative error of a non-zero numeric ground truth, else case-insensitive equality."""
    if is_year(ground_truth):
        return float(answer.lower() == ground_truth.lower())
    predicted, target = relaxed_float(answer), relaxed_float(ground_truth)
    if predicted is not None and target:
        return float(abs(predicted - target) / abs(target) <= tolerance)
    return float(answer.lower() == ground_truth.lower())


# --- VQA (EvalAI normalisation) -------------------------------------------------------------------------

# EvalAI's contraction table (VQA's official evaluation), as `written=normalised` pairs. Its entries with capitals
# ("Im", "Ive", "Id've", "I'dve") are left out: the text is lower-cased first, so they never match.
_CONTRACTION_TABLE = """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've couldnt've=couldn't've
didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've hadn'tve=hadn't've hasnt=hasn't havent=haven't
hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd howll=how'll hows=how's isnt=isn't itd=it'd
itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've
mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've neednt=needn't notve=not've oclock=o'clock
oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've
she's=she's shouldve=should've shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've
somebody'd=somebodyd somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll
somebodys=somebody's someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
someones=someone's somethingd=something'd somethingd've=something'd've something'dve=something'd've
somethingll=something'll thats=that's thered=there'd thered've=there'd've there'dve=there'd've therere=there're
theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've
twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're
whats=what's whatve=what've whens=when's whered=where'd wheres=where's whereve=where've whod=who'd whod've=who'd've
who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're whys=why's wont=won't
wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll
y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
"""
_CONTRACTIONS = dict(re.findall(r"(\S+)=(\S+)", _CONTRACTION_TABLE))
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                 "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d),+(?=\d)")
_PERIOD = re.compile(r"\.(?!\d)")  # a period not followed by a digit: "dogs." but not "2.5"
# EvalAI passes re.UNICODE (= 32) where re.sub takes its count, so at most 32 periods go; kept for identical scores.
_MAX_PERIODS_REMOVED = 32


def _strip_punctuation(text: str) -> str:
    out = text
    for mark in _PUNCTUATION:
        # A mark touching a space (or any digit-comma-digit in the text) is deleted, else it separates words.
        touches_space = mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if touches_space or _DIGIT_COMMA_DIGIT.search(text) else " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS_REMOVED)


def normalize_vqa_answer(answer: str) -> str:
    """EvalAI's VQA answer normalisation: lower case, punctuation, number words to digits, articles dropped,
    contractions restored. `"Two dogs."` and `"2 dogs"` both become `"2 dogs"`."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = _strip_punctuation(text.replace("\n", " ").replace("\t", " ").strip())
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def vqa_score(answer: str, ground_truth: str) -> float:
    """1.0 when both normalise to the same non-empty answer."""
    normalised = normalize_vqa_answer(answer)
    return float(bool(normalised) and normalised == normalize_vqa_answer(ground_truth))


# --- ANLS -----------------------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each)."""
    if len(a) > len(b):
        a, b = b, a
    previous = list(range(len(a) + 1))
    for j, char_b in enumerate(b, 1):
        current = [j]
        for i, char_a in enumerate(a, 1):
            current.append(min(previous[i] + 1, current[i - 1] + 1, previous[i - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def anls_score(answer: str, ground_truth: str, threshold: float = ANLS_THRESHOLD) -> float:
    """ANLS: 1 - Levenshtein distance of the lower-cased, space-collapsed texts over the longer raw text's length;
    0 when that normalised distance reaches `threshold`."""
    length = max(len(ground_truth.upper()), len(answer.upper()))
    if length == 0:
        return 1.0
    distance = levenshtein(" ".join(ground_truth.strip().lower().split()), " ".join(answer.strip().lower().split()))
    normalised = distance / length
    return 1.0 - normalised if normalised < threshold else 0.0


# --- math -----------------------------------------------------------------------------------------------


def _math_timeout() -> int | None:
    # math-verify times out through signal.alarm, which only the main thread may use.
    return 5 if threading.current_thread() is threading.main_thread() else None


def math_parse(text: str) -> list:
    """`math_verify.parse` of `text` (an empty list when nothing mathematical is found)."""
    from math_verify import parse

    return parse(text, parsing_timeout=_math_timeout())


def math_score(answer: str, ground_truth: str) -> float:
    """1.0 when math-verify finds the answer equal to the ground truth (`\\frac{1}{2}` and `0.5` agree)."""
    from math_verify import verify

    try:
        return float(verify(math_parse(ground_truth), math_parse(answer), timeout_seconds=_math_timeout()))
    except (ArithmeticError, RecursionError, TimeoutError, TypeError, ValueError) as err:  # costs this score only
        log.debug("math_score failed on %r vs %r: %s", answer[:80], ground_truth[:80], err)
        return 0.0


# --- accuracy -------------------------------------------------------------------------------------------

SCORES: dict[str, Callable[[str, str], float]] = {
    "multi_choices_score": multi_choices_score, "relaxed_score": relaxed_score, "vqa_score": vqa_score,
    "anls_score": anls_score, "math_score": math_score,
}


def check_modes(modes: Sequence[str]) -> None:
    """Raise a ValueError naming any mode VST's accuracy does not know."""
    unknown = [m for m in modes if m not in SCORES]
    if unknown:
        raise ValueError(f"meta_info.mode has unknown score(s) {unknown}; known: {', '.join(SCORES)} or bbox3d")


def vst_accuracy(completion: str, ground_truth: str, modes: Sequence[str]) -> float:
    """VST's accuracy of a completion: exact match of the answer after `</think>`, else the best of `modes`."""
    check_modes(modes)
    answer = answer_after_think(completion)
    if "\\boxed" in ground_truth:
        boxed_answer = first_boxed(answer)
        if boxed_answer is not None:
            boxed_truth = first_boxed(ground_truth)
            if boxed_truth is None:
                return 0.0
            answer, ground_truth = boxed_answer, boxed_truth
    if answer.lower() == ground_truth.lower():
        return 1.0
    return max((SCORES[mode](answer, ground_truth) for mode in modes), default=0.0)
