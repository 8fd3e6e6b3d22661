"""Data-prep stage: JSONL / HF dataset -> Megatron indexed dataset -> weighted blend."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from kd import data
from kd.sections import Data
from kd.specs import DataSource, DataSpec, replace_fields


def write_jsonl(path: Path, docs: list[str], extra: bool = True) -> Path:
    rows = [{"text": d, "id": i} if extra else {"text": d} for i, d in enumerate(docs)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return path


def corpus(first_word: int, n: int) -> list[str]:
    """Documents of 8-17 known words; each source uses its own words, so samples reveal it."""
    return [" ".join(f"w{first_word + (i + j) % 10}" for j in range(8 + i % 10)) for i in range(n)]


@pytest.fixture
def two_sources(tmp_path, tiny_tokenizer) -> DataSpec:
    a = write_jsonl(tmp_path / "a.jsonl", corpus(0, 60))
    b = write_jsonl(tmp_path / "b.jsonl", corpus(50, 60))
    return DataSpec(
        data=Data(
            sources=(
                DataSource(name="alpha", weight=3.0, jsonl=str(a)),
                DataSource(name="beta", weight=1.0, jsonl=str(b)),
            ),
            tokenizer=str(tiny_tokenizer),
            workers=1,
            log_interval=20,
        ),
        out_dir=str(tmp_path / "run" / "data"),
        done_marker=str(tmp_path / "run" / "stages" / "prepare_data.done"),
    )


def test_jsonl_to_indexed_dataset_and_blend(two_sources, tiny_tokenizer):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from transformers import AutoTokenizer

    result = data.run(two_sources)
    out = Path(two_sources.out_dir)
    prefixes = [str(out / "alpha_text_document"), str(out / "beta_text_document")]
    assert result["blend"] == [(3.0, prefixes[0]), (1.0, prefixes[1])]
    assert result["data_paths"] == ["3.0", prefixes[0], "1.0", prefixes[1]]
    assert data.load_blend(out) == result["blend"]
    assert json.loads((out / "blend.json").read_text())["data_paths"] == result["data_paths"]
    assert Path(two_sources.done_marker).is_file()
    # the JSONL copy holds the text key only; the indexed dataset holds the tokens + EOD
    copied = [json.loads(line) for line in (out / "alpha.jsonl").read_text().splitlines()]
    assert copied[0] == {"text": corpus(0, 1)[0]} and len(copied) == 60
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    ds = IndexedDataset(prefixes[0])
    assert len(ds) == 60
    expected = tok.encode(corpus(0, 1)[0]) + [tok.eos_token_id]
    assert ds[0].tolist() == expected
    assert not list(out.glob(".*")), "temporary files left behind"


def test_blend_weights_are_honoured(two_sources, tiny_tokenizer):
    from types import SimpleNamespace

    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    blend = data.run(two_sources)["blend"]
    config = GPTDatasetConfig(
        random_seed=1234,
        sequence_length=16,
        split="100,0,0",
        blend=([p for _, p in blend], [w for w, _ in blend]),
        path_to_cache=None,
        reset_position_ids=False,  # no cache: no torch.distributed needed
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        # what GPTDataset reads from its tokenizer (ids, and a cache key)
        tokenizer=SimpleNamespace(
            vocab_size=len(tok),
            eod=tok.eos_token_id,
            pad=tok.pad_token_id,
            unique_identifiers={"name": "tiny"},
        ),
    )
    train, _, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [400, 0, 0], lambda: True, config
    ).build()
    counts = np.bincount(train.dataset_index, minlength=2)
    assert counts.sum() == 400
    assert counts[0] / counts[1] == pytest.approx(3.0, rel=0.1)
    # each sample comes from the source the index names: alpha uses w0-w9, beta w50-w59
    words = {0: {f"w{i}" for i in range(10)}, 1: {f"w{i}" for i in range(50, 60)}}
    for i in range(0, 400, 37):
        tokens = tok.convert_ids_to_tokens(train[i]["tokens"].tolist())
        assert set(tokens) - {tok.eos_token} <= words[int(train.dataset_index[i])]


def test_second_run_skips_finished_sources(two_sources, monkeypatch, caplog):
    data.run(two_sources)
    bin_file = Path(two_sources.out_dir) / "alpha_text_document.bin"
    mtime = bin_file.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(data, "tokenize", fail)
    with caplog.at_level(logging.INFO, logger="kdlaunch.data"):
        again = data.run(two_sources)
    assert again["blend"][0][1] == str(bin_file.with_suffix(""))
    assert "skipping" in caplog.text and bin_file.stat().st_mtime_ns == mtime


def test_half_finished_or_changed_sources_are_rebuilt(two_sources):
    data.run(two_sources)
    out = Path(two_sources.out_dir)
    # a job killed before its done file: rebuilt, not trusted
    (out / "alpha.done.json").unlink()
    (out / "alpha_text_document.idx").write_bytes(b"garbage")
    data.run(two_sources)
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    assert len(IndexedDataset(str(out / "alpha_text_document"))) == 60
    # a changed source (fewer documents): rebuilt
    capped = replace(two_sources.data.sources[0], max_documents=7)
    data.run(replace_fields(two_sources, sources=(capped, two_sources.data.sources[1])))
    assert len(IndexedDataset(str(out / "alpha_text_document"))) == 7


def test_prefix_source_is_used_as_is(two_sources, tmp_path):
    first = data.run(two_sources)["blend"][0][1]
    spec = replace_fields(
        two_sources,
        out_dir=str(tmp_path / "other"),
        sources=(DataSource(name="pretokenized", weight=0.5, prefix=first),),
    )
    assert data.run(spec)["blend"] == [(0.5, first)]
    assert not (tmp_path / "other" / "pretokenized.jsonl").exists()


def test_hf_dataset_source_offline(tmp_path, tiny_tokenizer):
    """An HF dataset read through datasets.load_dataset (here a local folder: no Hub access)."""
    folder = tmp_path / "hf_folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", corpus(20, 30))
    spec = DataSpec(
        data=Data(
            sources=(DataSource(name="hf", hf_name=str(folder), hf_split="train", max_documents=12),),
            tokenizer=str(tiny_tokenizer), workers=1),
        out_dir=str(tmp_path / "data"),
    )
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ((weight, prefix),) = data.run(spec)["blend"]
    assert weight == 1.0 and len(IndexedDataset(prefix)) == 12


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda: {"json_keys": ("text", "title")}, "exactly one key"),
        (lambda: {"sources": ()}, "no sources"),
        (lambda: {"sources": (DataSource(name="x", jsonl="a"), DataSource(name="x", jsonl="a"))},
         "unique"),
        (lambda: {"sources": (DataSource(name="x"),)}, "exactly one of"),
        (lambda: {"sources": (DataSource(name="bad name", jsonl="a"),)}, "letters"),
        (lambda: {"sources": (DataSource(name="x", jsonl="/nope.jsonl"),)}, "not found"),
        (lambda: {"sources": (DataSource(name="x", prefix="/nope/data"),)}, "no .bin / .idx"),
    ],
)
def test_spec_mistakes_are_value_errors(two_sources, change, message):
    # value mistakes are refused where the spec is built (kd.sections), file mistakes by check()
    with pytest.raises(ValueError, match=message):
        data.check(replace_fields(two_sources, **change()))


def test_zero_weight_is_refused_beside_its_field():
    # the check lives in DataSource.__post_init__ (shared with the launcher's config)
    with pytest.raises(ValueError, match="weight"):
        DataSource(name="x", weight=0, jsonl="a")


def test_bad_jsonl_lines_are_value_errors(two_sources, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "w1 w2"}\n{"body": "w3"}\n')
    spec = replace_fields(two_sources, sources=(DataSource(name="bad", jsonl=str(bad)),))
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object with the key"):
        data.run(spec)
