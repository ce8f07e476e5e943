"""kdcli.data: text and image readers, tokenize/collate, bucketing and splits (real files in tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdcli import data
from kdcli.errors import DataError

SST2_TEST = Path("/work/shared/data/sst2/test.tsv")
LABEL2ID = {"negative": 0, "positive": 1}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- text formats

def test_csv_round_trip_with_quoting(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.csv", 'sentence,label\n"good, fun film",1\nawful plot,0\n\n"a ""quoted"" word",1\n')
    got = data.read_text(path)
    assert [(e.text, e.label, e.source) for e in got] == [
        ("good, fun film", 1, "train.csv:2"), ("awful plot", 0, "train.csv:3"),
        ('a "quoted" word', 1, "train.csv:5")]


def test_tsv_sst2_sample(tmp_path: Path) -> None:
    if SST2_TEST.exists():
        lines = SST2_TEST.read_text(encoding="utf-8").split("\n")[:6]  # header + 5 rows
    else:  # the same first rows, for machines without the shared data
        lines = ["sentence\tlabel", "it 's a charming and often affecting journey . \t1",
                 "unflinchingly bleak and desperate \t0", "the film 's \"ending\" is fine \t1",
                 "a dull , dull story \t0", "great acting \t1"]
    path = _write(tmp_path / "test.tsv", "\n".join(lines) + "\n")
    got = data.read_text(path)
    assert len(got) == 5
    for n, (example, line) in enumerate(zip(got, lines[1:]), start=2):
        text, label = line.split("\t")
        assert example.text == text.strip() and example.label == int(label)
        assert example.source == f"test.tsv:{n}"


def test_tsv_keeps_quotes_literally(tmp_path: Path) -> None:
    path = _write(tmp_path / "q.tsv", 'sentence\tlabel\n"the" film\t1\nit \'s "fine\t0\n')
    assert [e.text for e in data.read_text(path)] == ['"the" film', 'it \'s "fine']


def test_jsonl_ids_labels_and_sources(tmp_path: Path) -> None:
    rows = [{"id": "a7", "sentence": "good film", "label": "positive"},
            {"sentence": "bad film", "label": "negative"}, {"sentence": "fine", "label": 1.0}]
    path = _write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    got = data.read_text(path, label2id=LABEL2ID)
    assert [(e.text, e.label, e.source) for e in got] == [
        ("good film", 1, "a7"), ("bad film", 0, "d.jsonl:2"), ("fine", 1, "d.jsonl:3")]


def test_txt_is_unlabeled_and_skips_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "u.txt", "good film\n\n  \nbad plot\n")
    got = data.read_text(path)
    assert [(e.text, e.label, e.source) for e in got] == [("good film", None, "u.txt:1"), ("bad plot", None, "u.txt:4")]
    with pytest.raises(DataError, match="labels are required"):
        data.read_text(path, require_labels=True)


def test_missing_label_column_reads_unlabeled_unless_required(tmp_path: Path) -> None:
    path = _write(tmp_path / "u.csv", "sentence,other\ngood,x\n")
    assert data.read_text(path)[0].label is None
    assert data.read_text(path, label_column=None)[0].label is None
    with pytest.raises(DataError) as err:
        data.read_text(path, require_labels=True)
    assert "u.csv" in str(err.value) and "'label'" in str(err.value) and "'other'" in str(err.value)


# ---------------------------------------------------------------- labels

def test_label2id_names_and_integer_ids(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.tsv", "sentence\tlabel\ngood\tpositive\nbad\tnegative\nok\t1\nmeh\t0\n")
    assert [e.label for e in data.read_text(path, label2id=LABEL2ID)] == [1, 0, 1, 0]
    # HF's default names: SST-2's 0/1 still map as ids
    sst = _write(tmp_path / "s.tsv", "sentence\tlabel\ngood\t1\nbad\t0\n")
    assert [e.label for e in data.read_text(sst, label2id={"LABEL_0": 0, "LABEL_1": 1})] == [1, 0]


def test_unknown_labels_are_named_with_lines_and_known_labels(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.tsv", "sentence\tlabel\ngood\tpositive\nso so\tneutral\nhm\t7\nx\tneutral\n")
    with pytest.raises(DataError) as err:
        data.read_text(path, label2id=LABEL2ID)
    message = str(err.value)
    assert "bad.tsv" in message and "'neutral' (line 3)" in message and "'7' (line 4)" in message
    assert "'label'" in message and "'negative'=0" in message and "'positive'=1" in message
    assert err.value.exit_code == 2


def test_labels_must_be_integers_without_label2id(tmp_path: Path) -> None:
    path = _write(tmp_path / "n.csv", "sentence,label\ngood,1\nbad,negative\n")
    with pytest.raises(DataError, match=r"n\.csv.*'negative' \(line 3\)"):
        data.read_text(path)


def test_half_labelled_file_names_the_first_unlabelled_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "h.csv", "sentence,label\ngood,1\nbad,\n")
    with pytest.raises(DataError, match=r"h\.csv, line 3: no label in column 'label'"):
        data.read_text(path)


# ---------------------------------------------------------------- text errors

def test_missing_text_column_suggests_the_close_one(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.csv", "sentense,label\ngood,1\n")
    with pytest.raises(DataError) as err:
        data.read_text(path)
    message = str(err.value)
    assert "c.csv" in message and "no column 'sentence'" in message
    assert "did you mean 'sentense'" in message and "'label'" in message


def test_jsonl_missing_field_names_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "j.jsonl", '{"sentence": "good", "label": 1}\n{"text": "bad", "label": 0}\n')
    with pytest.raises(DataError, match=r"j\.jsonl, line 2: no column 'sentence'"):
        data.read_text(path)
    bad = _write(tmp_path / "k.jsonl", '{"sentence": "good"}\n{"sentence": \n')
    with pytest.raises(DataError, match=r"k\.jsonl, line 2: invalid JSON"):
        data.read_text(bad)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.tsv: no such file"):
        data.read_text(tmp_path / "nope.tsv")


def test_empty_file_and_header_only(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"e\.tsv: the file is empty"):
        data.read_text(_write(tmp_path / "e.tsv", ""))
    with pytest.raises(DataError, match=r"h\.tsv: no data rows"):
        data.read_text(_write(tmp_path / "h.tsv", "sentence\tlabel\n"))


def test_empty_text_and_wrong_field_count_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"t\.tsv, line 3: empty text in column 'sentence'"):
        data.read_text(_write(tmp_path / "t.tsv", "sentence\tlabel\ngood\t1\n \t0\n"))
    with pytest.raises(DataError, match=r"f\.tsv, line 2: 3 fields, the header has 2") as err:
        data.read_text(_write(tmp_path / "f.tsv", "sentence\tlabel\ngood\tfilm\t1\n"))
    assert "tabs" in str(err.value)


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.tsv"
    path.write_bytes("sentence\tlabel\ngood\t1\ncaf\u00e9 film\t0\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        data.read_text(path)
    assert "latin.tsv, line 3" in str(err.value) and "UTF-8" in str(err.value)


def test_unsupported_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"d\.xlsx: unsupported"):
        data.read_text(_write(tmp_path / "d.xlsx", "x"))


# ---------------------------------------------------------------- tokenize and collate

@pytest.fixture()
def tokenizer(tmp_path: Path):
    from transformers import BertTokenizerFast
    words = "[PAD] [UNK] [CLS] [SEP] [MASK] the a film is was good bad fun dull story plot very really"
    vocab = tmp_path / "vocab.txt"
    vocab.write_text(words.replace(" ", "\n") + "\n")
    return BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)


def test_tokenize_truncates_and_collate_pads_to_batch_max(tokenizer) -> None:
    examples = [data.TextExample("good film", 1, "x:1"), data.TextExample("the plot was really very dull", 0, "x:2"),
                data.TextExample(" ".join(["fun"] * 40), 1, "x:3")]
    features = data.tokenize(examples, tokenizer, max_length=16)
    assert [len(f["input_ids"]) for f in features] == [4, 8, 16]  # [CLS] ... [SEP], last one truncated
    assert [f["label"] for f in features] == [1, 0, 1]
    batch = data.collate_text(features[:2], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, 8) and batch["input_ids"].dtype == torch.long  # not max_length
    assert batch["attention_mask"].tolist() == [[1] * 4 + [0] * 4, [1] * 8]
    assert batch["input_ids"][0, 4:].tolist() == [tokenizer.pad_token_id] * 4
    assert batch["labels"].tolist() == [1, 0] and "index" not in batch
    indexed = data.collate_text([{**f, "index": i} for i, f in enumerate(features)], 0)
    assert indexed["index"].tolist() == [0, 1, 2] and indexed["input_ids"].shape == (3, 16)


def test_collate_drops_labels_unless_all_present() -> None:
    batch = data.collate_text([{"input_ids": [2, 5, 3], "label": 1}, {"input_ids": [2, 3], "label": None}], 0)
    assert "labels" not in batch and batch["input_ids"].tolist() == [[2, 5, 3], [2, 3, 0]]


# ---------------------------------------------------------------- bucketing

def _skewed_lengths(n: int = 2000) -> list[int]:
    g = torch.Generator().manual_seed(1)
    short = torch.randint(3, 12, (n,), generator=g)
    long = torch.randint(60, 128, (n,), generator=g)
    return torch.where(torch.rand(n, generator=g) < 0.8, short, long).tolist()


def _waste(batches: list[list[int]], lengths: list[int]) -> float:
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths) / padded


def test_length_buckets_cover_each_index_once_and_cut_padding() -> None:
    lengths = _skewed_lengths()
    batches = data.length_bucketed_batches(lengths, 32, shuffle=True, generator=torch.Generator().manual_seed(0))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert sorted(len(b) for b in batches)[1:] == [32] * (len(batches) - 1)  # one short batch at most
    perm = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    random_batches = [perm[i: i + 32] for i in range(0, len(perm), 32)]
    assert _waste(batches, lengths) < 0.5 * _waste(random_batches, lengths)


def test_length_buckets_deterministic_per_seed_and_sequential_without_shuffle() -> None:
    lengths = _skewed_lengths(500)
    run = lambda seed: data.length_bucketed_batches(lengths, 16, shuffle=True,
                                                    generator=torch.Generator().manual_seed(seed), bucket_factor=4)
    assert run(3) == run(3) and run(3) != run(4)
    assert data.length_bucketed_batches([5] * 10, 4, shuffle=False, generator=None) == [
        [0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert data.length_bucketed_batches([], 4, shuffle=True, generator=None) == []


# ---------------------------------------------------------------- images

def test_digits_shape_range_labels() -> None:
    got = data.read_images("sklearn:digits")
    assert got.images.shape == (1797, 3, 8, 8) and got.images.dtype == torch.float32
    assert got.images.min() >= 0 and got.images.max() == 1.0
    assert torch.equal(got.images[:, 0], got.images[:, 2])  # grayscale replicated
    assert got.labels.dtype == torch.long and sorted(set(got.labels.tolist())) == list(range(10))
    assert got.class_names == [str(i) for i in range(10)] and got.sources[5] == "digits:5"
    small = data.read_images("sklearn:digits", image_size=16, channels=1)
    assert small.images.shape == (1797, 1, 16, 16) and small.images.min() >= 0 and small.images.max() <= 1
    with pytest.raises(DataError, match="sklearn:mnist: unknown dataset"):
        data.read_images("sklearn:mnist")


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw"])
def test_npz_layouts(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 10, 10, 3), dtype=np.uint8)
    array = {"nhw": pixels[..., 0], "nhwc": pixels, "nchw": pixels.transpose(0, 3, 1, 2)}[layout]
    path = tmp_path / f"{layout}.npz"
    np.savez(path, images=array, labels=np.array([0, 1, 2, 0, 1, 2]), class_names=np.array(["a", "b", "c"]))
    got = data.read_images(path, image_size=12)
    assert got.images.shape == (6, 3, 12, 12) and got.images.dtype == torch.float32
    assert got.labels.tolist() == [0, 1, 2, 0, 1, 2] and got.class_names == ["a", "b", "c"]
    assert got.sources[0] == f"{layout}.npz:0"
    native = data.read_images(path)
    expected = torch.from_numpy(pixels.transpose(0, 3, 1, 2) / 255.0).float()
    expected = expected[:, :1].expand(-1, 3, -1, -1) if layout == "nhw" else expected
    assert torch.allclose(native.images, expected)


def test_npz_float_unlabeled_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "f.npz"
    np.savez(path, images=np.full((2, 4, 4), 0.5, dtype=np.float32))
    got = data.read_images(path, channels=1)
    assert got.labels is None and got.images.shape == (2, 1, 4, 4) and float(got.images.mean()) == 0.5
    np.savez(tmp_path / "wide.npz", images=np.full((2, 4, 4), 200.0))
    with pytest.raises(DataError, match=r"wide\.npz: float 'images' range"):
        data.read_images(tmp_path / "wide.npz")
    np.savez(tmp_path / "nokey.npz", x=np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match=r"nokey\.npz: no array 'images'") as err:
        data.read_images(tmp_path / "nokey.npz")
    assert "x" in str(err.value)


def _png(path: Path, value: int, size: tuple[int, int] = (10, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value // 2, 255 - value)).save(path)


def test_image_folder_two_classes(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for i in range(3):
        _png(root / "cat" / f"{i}.png", 10 * i)
        _png(root / "dog" / f"{i}.png", 200 + i, size=(16, 16))
    got = data.read_images(root, image_size=8)
    assert got.images.shape == (6, 3, 8, 8) and got.class_names == ["cat", "dog"]
    assert got.labels.tolist() == [0, 0, 0, 1, 1, 1] and got.sources[3] == str(Path("dog") / "0.png")
    assert abs(float(got.images[3, 0, 4, 4]) - 200 / 255) < 1e-6
    gray = data.read_images(root, image_size=8, channels=1)
    assert gray.images.shape == (6, 1, 8, 8)
    with pytest.raises(DataError, match="2 class folder"):
        data.read_images(root, image_size=8, min_classes=3)
    with pytest.raises(DataError, match=r"size .* differs") as err:
        data.read_images(root)
    assert "image_size" in str(err.value)


def test_corrupted_png_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _png(root / "a" / "ok.png", 5)
    _png(root / "b" / "ok.png", 9)
    good = (root / "b" / "ok.png").read_bytes()
    (root / "b" / "broken.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError) as err:
        data.read_images(root, image_size=8)
    assert "broken.png" in str(err.value) and "corrupted" in str(err.value)


def test_flat_folder_is_unlabeled_and_missing_path(tmp_path: Path) -> None:
    for i in range(2):
        _png(tmp_path / "flat" / f"{i}.png", i)
    got = data.read_images(tmp_path / "flat", image_size=4)
    assert got.labels is None and got.images.shape == (2, 3, 4, 4) and got.sources == ["0.png", "1.png"]
    with pytest.raises(DataError, match=r"nowhere: no such file or folder"):
        data.read_images(tmp_path / "nowhere")


def test_normalize_images() -> None:
    images = torch.full((2, 3, 2, 2), 0.5)
    out = data.normalize_images(images, (0.5, 0.25, 0.0), (0.5, 0.25, 0.5))
    assert out[:, 0].eq(0).all() and out[:, 1].eq(1).all() and out[:, 2].eq(1).all()
    with pytest.raises(DataError, match="3-channel"):
        data.normalize_images(images, (0.5,), (0.5,))


def test_split_indices_deterministic_and_disjoint() -> None:
    keep, held = data.split_indices(100, 0.2, seed=7)
    assert (keep, held) == data.split_indices(100, 0.2, seed=7)
    assert len(held) == 20 and not set(keep) & set(held) and sorted(keep + held) == list(range(100))
    assert held != data.split_indices(100, 0.2, seed=8)[1]
    assert len(data.split_indices(3, 0.01, 0)[1]) == 1
    with pytest.raises(DataError):
        data.split_indices(10, 1.5, 0)


def test_an_image_folder_decodes_per_batch_to_the_eager_pixels(tmp_path: Path) -> None:
    """Lazy reading (splits of an image folder) gives the very pixels the eager reader gives."""
    from PIL import Image

    from kdcli.data.images import ImageFiles, scan_image_folder
    rng = np.random.default_rng(1)
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    eager = data.read_images(tmp_path, image_size=16)
    files, labels, names, _ = scan_image_folder(tmp_path, 3, 16)
    lazy = ImageFiles(files, 3, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    expected = data.normalize_images(eager.images, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.testing.assert_close(lazy[torch.tensor([4, 0])], expected[[4, 0]], atol=0, rtol=0)
    torch.testing.assert_close(lazy.take([5, 1])[[0, 1]], expected[[5, 1]], atol=0, rtol=0)
    assert torch.equal(labels, eager.labels) and names == ["cat", "dog"]
