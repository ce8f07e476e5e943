"""token-classification (NER): tagged words read and aligned to sub-tokens, masked per-token losses, entity-level
metrics as seqeval scores them, and the whole job (init-student, distill, evaluate, export) through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import BertForTokenClassification, BertTokenizerFast
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.data.splits import load_split
from kdcli.losses import build_losses
from kdcli.models import load_model
from kdcli.profile import load_profile
from kdcli.tag_metrics import entities, entity_scores
from tests.conftest import tiny_bert_config

TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
# Whole words, and pieces: "walking" is walk ##ing, "annas" is anna ##s, "paris" one token.
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "in", "to", "and", "is", "was", "walk", "live",
         "went", "paris", "new", "york", "anna", "bob", "city", "house", "##ing", "##s", "##ed", "."]
OTHER, PLACES, PEOPLE = ["the", "a", "in", "to", "and", "is", "walking", "lived", "city", "houses"], \
    [["paris"], ["new", "york"]], [["anna"], ["bob"], ["annas"]]


def write_tokenizer(folder: Path) -> BertTokenizerFast:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = VOCAB + [f"[unused{i}]" for i in range(64 - len(VOCAB))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(folder, do_lower_case=True)
    tokenizer.save_pretrained(folder)
    return tokenizer


@pytest.fixture(scope="session")
def bert_ner(models_dir: Path) -> Path:
    torch.manual_seed(11)
    config = tiny_bert_config(num_labels=len(TAGS), id2label=dict(enumerate(TAGS)),
                              label2id={t: i for i, t in enumerate(TAGS)})
    folder = models_dir / "bert-ner"
    BertForTokenClassification(config).eval().save_pretrained(folder)
    write_tokenizer(folder)
    return folder


def sentences(count: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Random sentences of the vocabulary's words, places and people tagged BIO."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        words: list[str] = []
        tags: list[str] = []
        for _ in range(int(torch.randint(3, 9, (1,), generator=gen))):
            kind = int(torch.randint(0, 4, (1,), generator=gen))
            if kind < 2:
                words.append(OTHER[int(torch.randint(len(OTHER), (1,), generator=gen))])
                tags.append("O")
                continue
            pool, label = (PLACES, "LOC") if kind == 2 else (PEOPLE, "PER")
            entity = pool[int(torch.randint(len(pool), (1,), generator=gen))]
            words += entity
            tags += [f"B-{label}"] + [f"I-{label}"] * (len(entity) - 1)
        out.append((words, tags))
    return out


def write_conll(path: Path, rows: list[tuple[list[str], list[str]]]) -> Path:
    blocks = ["\n".join(f"{w}\t{t}" for w, t in zip(words, tags)) for words, tags in rows]
    path.write_text("-DOCSTART-\tO\n\n" + "\n\n".join(blocks) + "\n")
    return path


@pytest.fixture()
def ner_data(tmp_path: Path) -> dict[str, Path]:
    train = write_conll(tmp_path / "train.conll", sentences(40, 0))
    evalset = tmp_path / "eval.jsonl"
    evalset.write_text("".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in sentences(12, 1)))
    return {"train": train, "eval": evalset}


@pytest.fixture()
def ner_profile(write_profile, bert_ner: Path, ner_data: dict[str, Path]) -> Path:
    return write_profile({
        "name": "ner", "task": "token-classification", "teacher": {"path": str(bert_ner)},
        "student": {"path": "student-init", "init": {"layers": [0, 3]}},
        "data": {"train": str(ner_data["train"]), "eval": str(ner_data["eval"]), "max_length": 32},
        "distill": {"losses": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton", "temperature": 2.0},
                               {"kind": "dkd", "weight": 0.1}, {"kind": "hidden_mse", "layers": {1: 3}}]},
        "train": {"max_steps": 3, "batch_size": 8, "lr": 1e-3, "device": "cpu"},
        "export": {"batch_sizes": [1]}, "output": "run"})


def test_sub_tokens_carry_the_word_label_on_the_first_piece_only(write_profile, bert_ner: Path, tmp_path: Path):
    data = write_conll(tmp_path / "one.conll", [(["anna", "walking", "in", "new", "york"],
                                                 ["B-PER", "O", "O", "B-LOC", "I-LOC"]),
                                                (["annas", "houses"], ["B-PER", "O"])])
    profile = load_profile(write_profile({"name": "t", "task": "token-classification",
                                          "teacher": {"path": str(bert_ner)}, "student": {"path": "s"},
                                          "data": {"train": str(data)}, "output": "o"}))
    split = load_split(profile, "train", load_model("transformers", bert_ner, profile.task))
    tokenizer = BertTokenizerFast.from_pretrained(bert_ner)
    # [CLS] anna walk ##ing in new york [SEP] / [CLS] anna ##s house ##s [SEP], worked by hand:
    assert tokenizer.convert_ids_to_tokens(split.features[0]["input_ids"]) == \
        ["[CLS]", "anna", "walk", "##ing", "in", "new", "york", "[SEP]"]
    assert split.features[0]["label"] == [-100, 3, 0, -100, 0, 1, 2, -100]
    assert split.features[0]["words"] == [1, 2, 4, 5, 6]
    assert tokenizer.convert_ids_to_tokens(split.features[1]["input_ids"]) == \
        ["[CLS]", "anna", "##s", "house", "##s", "[SEP]"]
    assert split.features[1]["label"] == [-100, 3, -100, 0, -100, -100]
    batch = split.collate([0, 1])
    assert batch["labels"].tolist()[1] == [-100, 3, -100, 0, -100, -100, -100, -100]  # padded with -100
    assert batch["word_mask"].tolist()[1] == [False, True, False, True, False, False, False, False]


def test_per_token_losses_average_over_first_sub_tokens_only(ner_profile: Path, bert_ner: Path):
    profile = load_profile(ner_profile)
    teacher = load_model("transformers", bert_ner, profile.task)
    batch = load_split(profile, "eval", teacher).collate(list(range(6)))
    gen = torch.Generator().manual_seed(0)
    s, t = (torch.randn(*batch["input_ids"].shape, len(TAGS), generator=gen, dtype=torch.float64) for _ in "st")
    losses = {loss.kind: loss for loss in build_losses(profile.loss_specs(), teacher, teacher)}
    from kdcli.models import Outputs
    got = {kind: float(losses[kind](Outputs(logits=s), Outputs(logits=t), batch)) for kind in ("ce", "hinton", "dkd")}
    rows = [(i, j) for i in range(s.shape[0]) for j in range(s.shape[1]) if batch["word_mask"][i, j]]
    assert len(rows) == int((batch["labels"] != -100).sum()) < int(batch["attention_mask"].sum())
    label = [int(batch["labels"][i, j]) for i, j in rows]
    ce = sum(-F.log_softmax(s[i, j], -1)[y] for (i, j), y in zip(rows, label)) / len(rows)
    T = 2.0
    kl = sum((F.softmax(t[i, j] / T, -1) * (F.log_softmax(t[i, j] / T, -1) - F.log_softmax(s[i, j] / T, -1))).sum()
             for i, j in rows) / len(rows) * T * T
    assert got["ce"] == pytest.approx(float(ce), rel=1e-6)
    assert got["hinton"] == pytest.approx(float(kl), rel=1e-6)
    # dkd over the scored words equals mdistiller's dkd on those rows alone
    from kdcli.losses.functional import dkd
    rows_s = torch.stack([s[i, j] for i, j in rows])
    rows_t = torch.stack([t[i, j] for i, j in rows])
    spec = losses["dkd"].spec
    assert got["dkd"] == pytest.approx(float(dkd(rows_s, rows_t, torch.tensor(label), spec.alpha, spec.beta,
                                                 spec.temperature)), rel=1e-6)


def _ok(args: list[str]) -> dict:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if "--json" in args else {}


def test_the_whole_job_runs_and_the_onnx_tagger_matches(ner_profile: Path, one_thread):
    _ok(["init-student", str(ner_profile), "--quiet"])
    _ok(["distill", str(ner_profile), "--quiet"])
    report = _ok(["evaluate", str(ner_profile), "--json", "--min-metric", "0"])
    assert report["task"] == "token-classification"
    assert set(report["metrics"]) == {"precision", "recall", "f1", "accuracy"}
    assert set(report["agreement"]) == {"top1", "kl"}  # per word, with the teacher
    assert report["retention"] == pytest.approx(report["metrics"]["f1"] / report["teacher_metrics"]["f1"])
    assert [gate["measures"] for gate in report["gates"]] == ["f1"]  # entity F1 is the primary metric
    exported = _ok(["export", str(ner_profile), "--json", "--no-latency", "--quantize", "int8"])
    assert exported["parity"]["ok"]
    assert exported["int8"]["metric"] == "f1" and exported["int8"]["fp32"] == pytest.approx(report["metrics"]["f1"])
    import onnxruntime as ort
    session = ort.InferenceSession(exported["onnx"], providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    ids = torch.tensor([[2, 18, 12, 22, 3]])
    (logits,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": torch.ones_like(ids).numpy()})
    assert logits.shape == (1, 5, len(TAGS))  # [batch, tokens, classes]
    config = json.loads(Path("run/export/config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(len(TAGS))] == TAGS
    assert Path("run/export/tokenizer.json").is_file()
    onnx_report = _ok(["evaluate", str(ner_profile), "--json", "--model", exported["onnx"]])
    for key in ("f1", "precision", "recall", "accuracy"):
        assert onnx_report["metrics"][key] == pytest.approx(report["metrics"][key], abs=1e-9)


# --- entity-level metrics --------------------------------------------------------------------------


def test_entities_follow_seqeval_default_chunking():
    assert entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-PER"]) == \
        [(0, "PER", 0, 1), (0, "LOC", 3, 3), (0, "LOC", 4, 4), (0, "PER", 5, 5)]  # I- after O or a new type starts one
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", "I-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", "I-LOC"], ["O", "B-LOC", "O", "O"]]
    # worked by hand: gold PER 0-1, LOC 3, LOC 1-2 (sentence 2); predicted PER 0-1, LOC 3, LOC 1: 2 of 3 each way
    assert entity_scores(gold, pred) == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3,
                                                       "accuracy": 6 / 8})
    # sentences are chunked apart: gold is two entities (one per sentence), not one spanning both
    assert entity_scores([["B-PER"], ["I-PER"]], [["B-PER"], ["B-PER"]])["f1"] == 1.0
    assert entity_scores([["O"]], [["O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 1.0}


def _conlleval_f1(gold: list[list[str]], pred: list[list[str]]) -> float:
    conlleval = pytest.importorskip("conlleval")  # the CoNLL-2000 script, ported: an independent reference
    lines = [line for g, p in zip(gold, pred) for line in [*(f"w {a} {b}" for a, b in zip(g, p)), ""]]
    return conlleval.evaluate(lines)["overall"]["chunks"]["evals"]["f1"]


def test_evaluate_reports_the_entity_f1_a_reference_computes(ner_profile: Path, bert_ner: Path, ner_data):
    report = _ok(["evaluate", str(ner_profile), "--json", "--model", "teacher"])
    rows = [json.loads(line) for line in ner_data["eval"].read_text().splitlines()]
    tokenizer = BertTokenizerFast.from_pretrained(bert_ner)
    model = BertForTokenClassification.from_pretrained(bert_ner).eval()
    gold, pred = [], []
    for row in rows:  # transformers' own recipe, word by word: the first sub-token's prediction
        encoded = tokenizer(row["tokens"], is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            best = model(**encoded).logits[0].argmax(-1).tolist()
        word_ids, seen = encoded.word_ids(0), set()
        tags = []
        for position, word in enumerate(word_ids):
            if word is not None and word not in seen:
                seen.add(word)
                tags.append(TAGS[best[position]])
        gold.append(row["tags"])
        pred.append(tags)
    expected = entity_scores(gold, pred)
    assert report["metrics"] == pytest.approx(expected)
    assert report["metrics"]["f1"] == pytest.approx(_conlleval_f1(gold, pred))


# --- bad input --------------------------------------------------------------------------------------


def test_a_tag_the_teacher_does_not_know_is_bad_input(ner_profile: Path, tmp_path: Path):
    bad = write_conll(tmp_path / "bad.conll", [(["anna", "went", "to", "paris"], ["B-PER", "O", "O", "B-CITY"])])
    result = CliRunner().invoke(app, ["check", str(ner_profile), "--set", f"data.train={bad}"])
    assert result.exit_code == 2, result.output
    assert "unknown tag 'B-CITY'" in result.output and "bad.conll:3" in result.output  # the sentence's first line
    assert "Traceback" not in result.output


def test_a_tag_outside_bio_is_bad_input(write_profile, tmp_path: Path, bert_encoder: Path):
    data = write_conll(tmp_path / "iobes.conll", [(["the", "film"], ["S-PER", "O"])])  # classes from the data
    profile = write_profile({"name": "t", "task": "token-classification", "student": {"path": str(bert_encoder)},
                             "data": {"train": str(data)}, "output": "o"})
    result = CliRunner().invoke(app, ["check", str(profile)])
    assert result.exit_code == 2, result.output
    assert "not a BIO/IOB2 tag" in result.output


def test_sentences_longer_than_max_length_are_cut_with_a_warning_that_counts_them(ner_profile: Path):
    assert _ok(["init-student", str(ner_profile), "--quiet"]) == {}
    result = CliRunner().invoke(app, ["check", str(ner_profile), "--set", "data.max_length=6"])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "sentences are longer than data.max_length 6" in result.output


# --- pseudo-label -----------------------------------------------------------------------------------


def test_pseudo_label_tags_every_word_and_keeps_sentences_whose_every_word_passes(ner_profile: Path, tmp_path: Path):
    unlabeled = tmp_path / "raw.txt"
    unlabeled.write_text("\n".join(" ".join(words) for words, _ in sentences(10, 5)) + "\n")
    result = _ok(["pseudo-label", str(ner_profile), "--json", "--set", f"data.unlabeled={unlabeled}"])
    assert result["total"] == 10
    records = [json.loads(line) for line in Path(result["output"]).read_text().splitlines()]
    for record in records:
        assert len(record["tokens"]) == len(record["tags"]) == len(record["confidences"])
        assert set(record["tags"]) <= set(TAGS)
        assert record["confidence"] == min(record["confidences"])
    median = sorted(r["confidence"] for r in records)[len(records) // 2]
    result = _ok(["pseudo-label", str(ner_profile), "--json", "--set", f"data.unlabeled={unlabeled}",
                  "--set", f"pseudo.threshold={median}"])
    kept = [json.loads(line) for line in Path(result["output"]).read_text().splitlines()]
    assert kept and all(min(r["confidences"]) >= median for r in kept)
    assert len(kept) == sum(r["confidence"] >= median for r in records) < len(records) + 1
    # the records are {tokens, tags} rows: training data as they are, or pseudo-labels beside the labels
    assert CliRunner().invoke(app, ["check", str(ner_profile), "--set",
                                    f"data.train={result['output']}"]).exit_code == 0
    _ok(["init-student", str(ner_profile), "--quiet"])
    _ok(["distill", str(ner_profile), "--quiet", "--set", f"data.pseudo={result['output']}",
         "--set", "train.max_steps=2"])
    logged = [json.loads(line) for line in Path("run/metrics.jsonl").read_text().splitlines()]
    assert any(record.get("loss/pseudo", 0) > 0 for record in logged)


# --- every encoder family that loads ------------------------------------------------------------------

FAST_FAMILIES = ("distilbert", "bert->distilbert")


def _family_params() -> list:
    from tests.test_families import ENCODERS
    names = [*ENCODERS, "bert->distilbert"]
    return [pytest.param(n, marks=() if n in FAST_FAMILIES else pytest.mark.slow) for n in names]


@pytest.mark.parametrize("family", _family_params())
def test_every_encoder_family_tags_through_the_whole_job(family: str, tmp_path: Path, write_profile, one_thread):
    import transformers as tf

    from tests.conftest import write_tokenizer as write_words_tokenizer
    from tests.test_families import ENCODERS
    base = family.split("->")[0]
    torch.manual_seed(0)
    config = ENCODERS[base]()
    config.id2label, config.label2id = dict(enumerate(TAGS)), {t: i for i, t in enumerate(TAGS)}
    teacher = tmp_path / "teacher"
    tf.AutoModelForTokenClassification.from_config(config).save_pretrained(teacher)
    write_words_tokenizer(teacher)
    gen = torch.Generator().manual_seed(0)
    rows = [(w, [TAGS[int(i)] for i in torch.randint(len(TAGS), (len(w),), generator=gen)])
            for w in (["the", "film", "was", "good"], ["a", "story", "and", "a", "plot"], ["it", "is", "fun"])] * 4
    data = write_conll(tmp_path / "tags.conll", rows)
    init = {"layers": [0, 2], **({"architecture": "distilbert"} if "->" in family else {})}
    profile = write_profile({
        "name": family.replace(">", ""), "task": "token-classification", "teacher": {"path": str(teacher)},
        "student": {"path": "student-init", "init": init},
        "data": {"train": str(data), "eval": str(data), "max_length": 16},
        "distill": {"losses": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton", "temperature": 2.0},
                               {"kind": "hidden_mse", "layers": "uniform"}]},
        "train": {"max_steps": 2, "batch_size": 8, "lr": 1e-3, "threads": 1}, "export": {"batch_sizes": [2]},
        "output": "run"})
    _ok(["init-student", str(profile), "--quiet"])
    student = tf.AutoModelForTokenClassification.from_pretrained("student-init")
    assert student.config.id2label == dict(enumerate(TAGS))
    original = tf.AutoModelForTokenClassification.from_pretrained(teacher)
    assert torch.equal(student.classifier.weight, original.classifier.weight)  # the head, copied bit for bit
    _ok(["distill", str(profile), "--quiet"])
    assert "f1" in _ok(["evaluate", str(profile), "--json"])["metrics"]
    assert _ok(["export", str(profile), "--json", "--no-latency"])["parity"]["ok"]


def test_the_teacher_cache_and_a_transfer_set_serve_tagged_words(ner_profile: Path, bert_ner: Path, tmp_path: Path):
    from kdcli.train.cache import TeacherCache
    profile = load_profile(ner_profile)
    teacher = load_model("transformers", bert_ner, profile.task)
    split = load_split(profile, "train", teacher)
    losses = build_losses(profile.loss_specs()[:3], teacher, teacher)
    cache = TeacherCache.load_or_build(teacher, split, frozenset({"logits"}), torch.nn.ModuleList(losses), 8,
                                       torch.device("cpu"), tmp_path / "cache.pt")
    batch = split.collate([0, 5, 9])
    live = teacher.forward(batch).logits
    cached = cache.outputs(batch["index"], batch, torch.device("cpu")).logits
    real = batch["attention_mask"].bool()
    assert cached.shape == live.shape and torch.allclose(cached[real], live[real], atol=1e-5)
    raw = tmp_path / "raw.txt"  # unlabeled sentences: the student learns the teacher's tags on their words
    raw.write_text("\n".join(" ".join(words) for words, _ in sentences(16, 9)) + "\n")
    _ok(["init-student", str(ner_profile), "--quiet"])
    _ok(["distill", str(ner_profile), "--quiet", "--set", "train.cache_teacher=true", "--set",
         f"data.transfer={raw}", "--set", 'distill.losses=[{kind: ce, weight: 0.5}, {kind: hinton}]'])
    logged = [json.loads(line) for line in Path("run/metrics.jsonl").read_text().splitlines()]
    assert any("loss/transfer/hinton" in record for record in logged)
    assert not any("loss/transfer/ce" in record for record in logged)  # the label loss skips transfer words


@pytest.mark.parametrize("declared", [None, ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]])
def test_without_a_teacher_the_tags_come_from_data_classes_or_the_data(declared, write_profile, bert_encoder: Path,
                                                                        tmp_path: Path, one_thread):
    rows = [(["the", "film", "and", "the", "story"], ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]),
            (["a", "plot"], ["O", "B-LOC"])] * 4
    data = write_conll(tmp_path / "tags.conll", rows)
    profile = write_profile({"name": "labels", "task": "token-classification", "student": {"path": str(bert_encoder)},
                             "data": {"train": str(data), "eval": str(data),
                                      **({"classes": declared} if declared else {})},
                             "distill": {"losses": [{"kind": "ce"}]}, "train": {"max_steps": 2, "batch_size": 4},
                             "output": "run"})
    _ok(["distill", str(profile), "--quiet"])
    config = json.loads(Path("run/student/config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    expected = declared or sorted({t for _, tags in rows for t in tags})  # the one label rule: sorted data tags
    assert [config["id2label"][str(i)] for i in range(len(expected))] == expected


def test_every_reader_gives_the_same_tagged_words(write_profile, bert_ner: Path, tmp_path: Path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    rows = sentences(6, 3)
    conll = write_conll(tmp_path / "a.conll", rows)
    tsv = tmp_path / "a.tsv"
    tsv.write_text("tokens\ttags\n" + "".join(f"{' '.join(w)}\t{' '.join(t)}\n" for w, t in rows))
    parquet = tmp_path / "a.parquet"  # as a Hugging Face dataset holds WNUT-17: integer tags in `ner_tags`
    pq.write_table(pa.table({"tokens": [w for w, _ in rows], "ner_tags": [[TAGS.index(x) for x in t] for _, t in rows]}),
                   parquet)
    model = load_model("transformers", bert_ner, "token-classification")

    def features(path: Path, **data: str) -> list[dict]:
        profile = load_profile(write_profile({"name": "t", "task": "token-classification",
                                              "teacher": {"path": str(bert_ner)}, "student": {"path": "s"},
                                              "data": {"train": str(path), **data}, "output": "o"}))
        return [{k: f[k] for k in ("input_ids", "label", "words")} for f in load_split(profile, "train", model).features]
    expected = features(conll)
    assert features(tsv) == expected
    assert features(parquet, label_column="ner_tags") == expected


def test_the_ready_profile_runs_the_whole_job_with_the_files_substituted(bert_ner: Path, ner_data, tmp_path: Path,
                                                                          one_thread):
    ready = str(Path(__file__).parents[1] / "profiles" / "wnut17-ner.yaml")
    raw = tmp_path / "raw.txt"
    raw.write_text("\n".join(" ".join(words) for words, _ in sentences(6, 4)) + "\n")
    sets = [f"teacher.path={bert_ner}", "student.path=student-init", f"data.train={ner_data['train']}",
            f"data.eval={ner_data['eval']}", f"data.unlabeled={raw}", "output=run", "train.max_steps=2",
            "pseudo.threshold=0"]  # a random teacher is never 90% sure
    args = [x for s in sets for x in ("--set", s)]
    for command in ("init-student", "distill", "pseudo-label"):
        _ok([command, ready, "--quiet", *args])
    assert "f1" in _ok(["evaluate", ready, "--json", *args])["metrics"]
    assert _ok(["export", ready, "--json", "--no-latency", *args])["parity"]["ok"]
