"""VST parquet format and validating readers: schema round trip, LLaVA JSON, every bad-row case."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from spatial_tuning import readers
from spatial_tuning.readers import BadSampleError, load_samples, load_samples_with_report
from spatial_tuning.sample import SpatialSample
from spatial_tuning.vst_format import VST_SCHEMA, samples_to_table, write_parquet


def _png(color=(200, 30, 30), size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _sample(i: int, n_images: int = 1) -> SpatialSample:
    placeholders = "".join("<image>" for _ in range(n_images))
    return SpatialSample(
        id=f"s{i}", images=[_png((i * 40 % 255, 10, 10)) for _ in range(n_images)], type="spatial_thought",
        data_source="unit", meta_info={"skill": "depth_comparison", "mode": "multiple_choice", "answer": "B",
                                       "options": ["A. x", "B. y"], "scene_id": "sc0"},
        conversations=[{"from": "human", "value": f"{placeholders}Which is closer?"},
                       {"from": "gpt", "value": "<think>y is at 1 m</think> B"}])


def test_parquet_round_trip_keeps_every_field(tmp_path):
    samples = [_sample(0), _sample(1, n_images=2), _sample(2, n_images=0)]
    path = write_parquet(samples, tmp_path / "d.parquet")
    table = pq.read_table(path)
    assert table.schema.equals(VST_SCHEMA)
    row = table.slice(0, 1).to_pylist()[0]
    assert isinstance(row["meta_info"], str) and json.loads(row["meta_info"])["answer"] == "B"
    assert set(row["images"][0]) == {"bytes", "path"}
    # Written with VST's flags (`vst/preprocess.py` IMAGE_FLAG), read back as this stack's `<image>`.
    assert row["conversations"][0]["value"] == "<|image_pad|>Which is closer?"
    loaded = load_samples(path)
    assert [s.id for s in loaded] == ["s0", "s1", "s2"]
    for original, back in zip(samples, loaded):
        assert back == original
    assert loaded[1].pil_images()[1].size == (8, 6)
    assert loaded[0].think and loaded[0].skill == "depth_comparison"


def test_same_samples_same_bytes(tmp_path):
    a = write_parquet([_sample(0), _sample(1)], tmp_path / "a.parquet").read_bytes()
    b = write_parquet([_sample(0), _sample(1)], tmp_path / "b.parquet").read_bytes()
    assert a == b


def test_videos_column_round_trip(tmp_path):
    sample = SpatialSample(id="v", conversations=[{"from": "human", "value": "<video>What moved?"},
                                                  {"from": "gpt", "value": "A"}], videos=[[_png(), _png()]])
    loaded = load_samples(write_parquet([sample], tmp_path / "v.parquet"))
    assert loaded[0].videos == sample.videos and len(loaded[0].pil_videos()[0]) == 2


def test_video_frames_in_the_images_column_become_a_video(tmp_path):
    row = samples_to_table([_sample(0)]).to_pylist()[0]
    row["conversations"] = [{"from": "human", "value": "<video>\nWhat appears first?"}, {"from": "gpt", "value": "A"}]
    row["images"] = row["images"] * 3
    _write_rows([row], tmp_path / "v.parquet")
    (sample,) = load_samples(tmp_path / "v.parquet")
    assert sample.images == [] and len(sample.videos[0]) == 3


def test_directory_and_list_inputs(tmp_path):
    write_parquet([_sample(0)], tmp_path / "d" / "train.parquet")
    write_parquet([_sample(1)], tmp_path / "d" / "sub" / "more.parquet")
    assert [s.id for s in load_samples(tmp_path / "d")] == ["s1", "s0"]  # sorted paths: sub/more < train
    assert len(load_samples([tmp_path / "d" / "train.parquet", str(tmp_path / "d" / "sub")])) == 2
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_samples(tmp_path / "nowhere")


def test_llava_json_with_image_folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(_png())
    rows = [{"id": "j0", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                             {"from": "gpt", "value": "a box"}]},
            {"id": "j1", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
             "meta_info": {"mode": "numeric", "answer": 1.0}}]
    (tmp_path / "data.json").write_text(json.dumps(rows))
    loaded = load_samples(tmp_path / "data.json", image_root=tmp_path / "imgs")
    assert loaded[0].images == [_png()] and loaded[1].meta_info["answer"] == 1.0
    with pytest.raises(BadSampleError, match="j0.*missing_image"):
        load_samples(tmp_path / "data.json")  # default root is the JSON's folder, where a.png is not


def _bad_rows() -> dict[str, dict]:
    """One row per rejection reason, each otherwise valid."""
    good = samples_to_table([_sample(0)]).to_pylist()[0]

    def variant(**changes):
        return dict(good, **changes)

    turns = good["conversations"]
    return {
        readers.MISSING_IMAGE: variant(id="r_missing", images=[{"bytes": None, "path": "gone.png"}]),
        readers.UNDECODABLE_IMAGE: variant(id="r_undecodable", images=[{"bytes": b"not a png", "path": "x.png"}]),
        readers.IMAGE_COUNT_MISMATCH: variant(id="r_count", images=good["images"] * 2),
        readers.EMPTY_CONVERSATION: variant(id="r_empty", conversations=[]),
        readers.NON_ALTERNATING_CONVERSATION: variant(id="r_alt", conversations=[turns[0], turns[0]]),
        readers.NON_STRING_VALUE: variant(id="r_value", conversations=[turns[0], {"from": "gpt", "value": None}]),
        readers.BAD_META_INFO: variant(id="r_meta", meta_info="{not json"),
    }


def _write_rows(rows: list[dict], path) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=VST_SCHEMA), path)


@pytest.mark.parametrize("reason", list(_bad_rows()))
def test_bad_row_raises_naming_file_row_and_reason(tmp_path, reason):
    row = _bad_rows()[reason]
    path = tmp_path / "bad.parquet"
    _write_rows([samples_to_table([_sample(5)]).to_pylist()[0], row], path)
    with pytest.raises(BadSampleError) as info:
        load_samples(path)
    assert info.value.reason == reason and info.value.row_id == row["id"]
    assert str(path) in str(info.value) and row["id"] in str(info.value) and reason in str(info.value)


def test_skip_counts_every_reason(tmp_path):
    bad = _bad_rows()
    good = samples_to_table([_sample(7), _sample(8)]).to_pylist()
    path = tmp_path / "mixed.parquet"
    _write_rows([good[0], *bad.values(), good[1]], path)
    samples, report = load_samples_with_report(path, on_bad_sample="skip")
    assert [s.id for s in samples] == ["s7", "s8"]
    assert report.loaded == 2 and report.total_skipped == len(bad)
    assert dict(report.skipped) == {reason: 1 for reason in bad}
    assert "r_meta" in report.examples[readers.BAD_META_INFO][0]
    assert "skipped 7" in report.summary()
    with pytest.raises(ValueError, match="on_bad_sample"):
        load_samples(path, on_bad_sample="drop")


def test_json_bad_rows_and_video_placeholder_mismatch(tmp_path):
    rows = [{"id": "ok", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
            {"id": "vid", "conversations": [{"from": "human", "value": "<video>q"}, {"from": "gpt", "value": "a"}]},
            {"id": "meta", "meta_info": "3",
             "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
            {"id": "last", "conversations": [{"from": "human", "value": "q"}]}]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    samples, report = load_samples_with_report(path, on_bad_sample="skip")
    assert [s.id for s in samples] == ["ok"]
    assert dict(report.skipped) == {readers.VIDEO_COUNT_MISMATCH: 1, readers.BAD_META_INFO: 1,
                                    readers.NON_ALTERNATING_CONVERSATION: 1}


@pytest.mark.parametrize("meta,reason", [
    ({"mode": "multiple_choice", "answer": "B", "options": ["A. x", "B. y"]}, None),
    ({"mode": "multiple_choice", "answer": "y", "options": ["A. x", "B. y"]}, None),  # an option's text
    ({"mode": "multiple_choice", "answer": "maybe"}, readers.ANSWER_NOT_CHOICE),
    ({"mode": "numeric", "answer": 1.25}, None),
    ({"mode": "numeric", "answer": "1,250"}, None),
    ({"mode": "numeric", "answer": "far"}, readers.ANSWER_NOT_NUMBER),
    ({"mode": "bbox3d", "answer": [{"label": "a", "bbox_3d": [0, 0, 1, 1, 1, 1, 0, 0, 0]}]}, None),
    ({"mode": "bbox3d", "answer": "[{label: a}]"}, readers.ANSWER_NOT_BOXES),
    ({"mode": "bbox3d", "answer": []}, readers.EMPTY_ANSWER),
    ({"mode": ["multi_choices_score"], "answer": "(C) the lamp"}, None),
    ({"mode": ["multi_choices_score"], "answer": "`B`"}, None),
    ({"mode": ["multi_choices_score"], "answer": "A lamp"}, readers.ANSWER_NOT_CHOICE),  # VST: "A x" is an article
    ({"mode": ["relaxed_score"], "answer": "12.5%"}, None),
    ({"mode": ["relaxed_score"], "answer": "2019"}, None),
    ({"mode": ["relaxed_score"], "answer": "1.5 m"}, readers.ANSWER_NOT_NUMBER),
    ({"mode": ["relaxed_score", "vqa_score"], "answer": "red"}, None),  # the maximum over modes: vqa scores it
    ({"mode": ["vqa_score"], "answer": "  "}, readers.EMPTY_ANSWER),
    ({"mode": ["math_score"], "answer": "\\frac{1}{2}"}, None),
    ({"mode": ["anls_score"], "answer": "a red lamp"}, None),
    ({"mode": ["bbox3d"], "answer": "no boxes"}, readers.ANSWER_NOT_BOXES),
    ({"mode": ["exp_rate"], "answer": "x"}, readers.UNKNOWN_REWARD_MODE),
    ({"mode": "choice", "answer": "x"}, readers.UNKNOWN_REWARD_MODE),
    ({"answer": ""}, None),  # no mode: no reward ground truth to check
])
def test_ground_truth_checked_in_its_mode(meta, reason):
    from spatial_tuning.ground_truth_check import check_ground_truth
    from spatial_tuning.row_problems import RowProblem

    if reason is None:
        check_ground_truth(meta)
    else:
        with pytest.raises(RowProblem) as info:
            check_ground_truth(meta)
        assert info.value.reason == reason
