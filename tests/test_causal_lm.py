"""Causal LMs end to end on tiny random Llama / Qwen2 / GPT-2: init-student, data, vocabularies, distill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.data.lm import Columns, lm_labels, read_lm, tokenize_lm
from tests.conftest import lm_tokenizer, save_tiny_lm

FAMILY_LAYERS = {"llama": "model.layers", "qwen2": "model.layers", "gpt2": "transformer.h"}


def lm_profile(teacher: Path, train: Path) -> dict:
    return {"name": "lm", "task": "causal-lm", "teacher": {"path": str(teacher)},
            "student": {"path": "student-init", "init": {"layers": [0, 3]}},
            "data": {"train": str(train), "eval": str(train), "max_length": 48},
            "distill": {"losses": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton", "temperature": 1.0}]},
            "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "log_every": 1},
            "output": "run"}


def cli(*args: str) -> tuple[int, dict | str]:
    result = CliRunner().invoke(app, list(args))
    try:
        return result.exit_code, json.loads(result.stdout)
    except ValueError:
        return result.exit_code, result.stderr + result.stdout


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_init_student_keeps_chosen_decoder_layers_bit_for_bit(tiny_lms, lm_data, write_profile, family, one_thread
                                                              ) -> None:
    path = write_profile(lm_profile(tiny_lms[family], lm_data["train"]))
    code, report = cli("init-student", str(path), "--json")
    assert code == 0, report
    assert report["layer_map"] == [0, 3] and report["student"]["layers"] == 2
    folder = path.parent / "student-init"
    teacher, student = load_file(tiny_lms[family] / "model.safetensors"), load_file(folder / "model.safetensors")
    prefix = FAMILY_LAYERS[family]
    for key, value in student.items():
        source = key.replace(f"{prefix}.1.", f"{prefix}.3.")
        assert torch.equal(value, teacher[source]), key
    model = AutoModelForCausalLM.from_pretrained(folder)  # transformers alone
    assert model.config.num_hidden_layers == 2
    if family == "llama":  # tied embeddings stay tied
        assert model.config.tie_word_embeddings
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    if family == "qwen2":
        assert len(model.config.layer_types) == 2
    out = model.generate(torch.tensor([[1, 9, 11]]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)


def test_lm_data_masks_prompts_and_pads_per_batch(lm_data) -> None:
    tok = lm_tokenizer()
    pairs = read_lm(lm_data["pairs"])
    features = tokenize_lm(pairs[:2], tok, 64)
    first = features[0]
    assert first["input_ids"][0] == tok.bos_token_id and first["input_ids"][-1] == tok.eos_token_id
    prompt_len = len(tok(pairs[0].prompt)["input_ids"])
    assert first["prompt_len"] == prompt_len
    labels = lm_labels(features, max(len(f["input_ids"]) for f in features))
    learned = labels[0][labels[0] != -100].tolist()
    assert learned == first["input_ids"][prompt_len:]  # completion tokens (and EOS) only
    assert (labels[0, : prompt_len - 1] == -100).all()
    chat = tokenize_lm(read_lm(lm_data["chat"]), tok, 64)[0]
    assistant = tok.convert_tokens_to_ids("<|assistant|>")
    assert chat["input_ids"][chat["prompt_len"] - 1] == assistant  # the loss starts after the assistant tag
    docs = tokenize_lm(read_lm(lm_data["train"]), tok, 6)
    assert all(f["prompt_len"] == 0 and len(f["input_ids"]) <= 6 for f in docs)
    assert read_lm(lm_data["pairs"], Columns(), prompts_only=True)[0].completion is None


@pytest.mark.parametrize("loss", ["reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"])
def test_distill_trains_with_each_token_loss(tiny_lms, lm_data, write_profile, loss, one_thread) -> None:
    spec = lm_profile(tiny_lms["llama"], lm_data["pairs"])
    spec["distill"] = {"losses": [{"kind": loss}, {"kind": "hidden_cosine", "layers": {2: 4}}]}
    path = write_profile(spec)
    assert cli("init-student", str(path), "--json")[0] == 0
    code, result = cli("distill", str(path), "--json", "--quiet")
    assert code == 0, result
    assert result["eval"]["metrics"]["perplexity"] > 1.0
    assert 0.0 <= result["eval"]["agreement"]["top1"] <= 1.0
    metrics = [json.loads(line) for line in (path.parent / "run" / "metrics.jsonl").read_text().splitlines()]
    assert f"loss/{loss}" in metrics[0]


def test_sparse_cache_serves_token_losses(tiny_lms, lm_data, write_profile, one_thread) -> None:
    spec = lm_profile(tiny_lms["gpt2"], lm_data["chat"])
    spec["train"].update(max_steps=3, cache_teacher=True, cache_topk=8)
    spec["distill"] = {"losses": [{"kind": "ce", "weight": 0.2}, {"kind": "jsd", "beta": 0.3}]}
    path = write_profile(spec)
    assert cli("init-student", str(path), "--json")[0] == 0
    code, result = cli("distill", str(path), "--json", "--quiet")
    assert code == 0, result
    spec["distill"] = {"losses": [{"kind": "hidden_mse"}]}
    spec["output"] = "run2"
    code, message = cli("distill", str(write_profile(spec)))
    assert code == 2 and "cannot serve hidden_mse" in message


def test_vocabularies_padding_rows_are_cut_and_others_refused(tmp_path, tiny_lms, lm_data, write_profile,
                                                              one_thread) -> None:
    padded = save_tiny_lm(tmp_path / "padded", "qwen2", vocab_size=72)  # Qwen2.5-style extra rows
    spec = lm_profile(padded, lm_data["train"])
    spec["student"] = {"path": str(tiny_lms["qwen2"])}
    code, result = cli("distill", str(write_profile(spec)), "--json", "--quiet")
    assert code == 0, result
    other = tmp_path / "other"
    save_tiny_lm(other, "qwen2")
    lm_tokenizer(extra=["zebra"]).save_pretrained(other)
    spec["student"] = {"path": str(other)}
    spec["output"] = "run-other"
    code, message = cli("distill", str(write_profile(spec)))
    assert code == 2
    assert "64 tokens" in message and "first difference: id 7 is 'Ġ' in the teacher, 'zebra' in the student" in message


def test_sparse_cache_against_full_logits(tmp_path, tiny_lms, lm_data) -> None:
    from kdcli.data.splits import Split
    from kdcli.losses import functional as KF
    from kdcli.models.hf import load_hf
    from kdcli.train.sparse_cache import SparseLogitCache, build_tables

    teacher = load_hf(tiny_lms["llama"], "causal-lm")
    features = tokenize_lm(read_lm(lm_data["pairs"]), teacher.tokenizer, 48)
    split = Split(kind="text", size=len(features), lengths=[len(f["input_ids"]) for f in features],
                  features=features, pad_token_id=0)
    batch = split.collate([3, 0, 5])
    full = teacher.forward(batch).logits
    student = torch.randn_like(full)
    mask = batch["labels"] != -100
    for k, exact in ((64, True), (8, False)):
        cache = SparseLogitCache(build_tables(teacher, split, 4, torch.device("cpu"), k))
        assert cache.bytes_per_token() == 8 * k + 4
        sparse = cache.outputs(batch["index"], batch, torch.device("cpu")).topk
        got = KF.token_loss(student, sparse, "forward_kl", mask).item()
        want = KF.token_loss(student, full, "forward_kl", mask).item()
        assert got == pytest.approx(want, abs=1e-5) if exact else 0 < got < want + 1e-6


def test_evaluate_perplexity_by_hand_and_gates(tiny_lms, lm_data, write_profile, one_thread) -> None:
    import torch.nn.functional as F
    spec = lm_profile(tiny_lms["qwen2"], lm_data["pairs"])
    path = write_profile(spec)
    assert cli("init-student", str(path), "--json")[0] == 0
    code, report = cli("evaluate", str(path), "--model", str(path.parent / "student-init"), "--json")
    assert code == 0, report
    # by hand: Σ -log p(next completion token) over every pair, one at a time, no padding
    tok = lm_tokenizer()
    nll, count = 0.0, 0
    for model_dir, key in ((path.parent / "student-init", "metrics"), (tiny_lms["qwen2"], "teacher_metrics")):
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        nll, count = 0.0, 0
        for feature in tokenize_lm(read_lm(lm_data["pairs"]), tok, 48):
            ids = torch.tensor([feature["input_ids"]])
            with torch.no_grad():
                log_p = F.log_softmax(model(ids).logits[0].double(), -1)
            for t in range(feature["prompt_len"], ids.shape[1]):
                nll -= log_p[t - 1, ids[0, t]].item()
                count += 1
        assert report[key]["perplexity"] == pytest.approx(float(torch.tensor(nll / count).exp()), rel=1e-4)
        assert report[key]["tokens"] == count
    assert report["retention"] == pytest.approx(report["teacher_metrics"]["perplexity"] / report["metrics"]["perplexity"])
    assert 0 <= report["agreement"]["top1"] <= 1 and report["agreement"]["kl"] >= 0
    code, message = cli("evaluate", str(path), "--model", str(path.parent / "student-init"), "--min-retention", "1.5")
    assert code == 1 and "retention" in message


def test_export_decoder_parity_with_padding_and_prefill_speed(tiny_lms, lm_data, write_profile, one_thread) -> None:
    spec = lm_profile(tiny_lms["llama"], lm_data["pairs"])
    spec["export"] = {"batch_sizes": [2]}
    path = write_profile(spec)
    assert cli("init-student", str(path), "--json")[0] == 0
    code, result = cli("export", str(path), "--student", str(path.parent / "student-init"), "--json")
    assert code == 0, result
    assert result["parity"]["ok"], result["parity"]
    assert any(shape[0] > 1 for shape in result["parity"]["shapes"])  # padded batches of several lengths
    rows = result["latency"]["rows"]
    assert {r["model"] for r in rows} == {"teacher", "student"} and all(r["tokens_per_s"] > 0 for r in rows)
    # what ships is what is measured: the ONNX decoder's perplexity is the PyTorch one
    reports = [cli("evaluate", str(path), "--model", str(model), "--json")[1]
               for model in (path.parent / "student-init", Path(result["onnx"]))]
    assert reports[1]["metrics"]["perplexity"] == pytest.approx(reports[0]["metrics"]["perplexity"], rel=1e-4)


def test_sequence_level_pseudo_labels_then_distill(tiny_lms, lm_data, write_profile, one_thread) -> None:
    spec = lm_profile(tiny_lms["llama"], lm_data["train"])
    spec["data"].update(unlabeled=str(lm_data["chat"]), pseudo="run/pseudo/labels.jsonl")
    spec["pseudo"] = {"max_new_tokens": 5}
    path = write_profile(spec)
    code, result = cli("pseudo-label", str(path), "--json")
    assert code == 0, result
    labels = path.parent / "run" / "pseudo" / "labels.jsonl"
    records = [json.loads(line) for line in labels.read_text().splitlines()]
    assert len(records) == result["total"] == 8
    assert records[0]["messages"][-1] == {"role": "assistant", "content": records[0]["completion"]}
    again = [json.loads(line) for line in (labels.read_text().splitlines())]
    assert cli("pseudo-label", str(path), "--json")[0] == 0  # greedy: the same completions again
    assert [json.loads(line) for line in labels.read_text().splitlines()] == again
    # greedy decoding by hand: the teacher's argmax continuation of the first prompt
    tok = lm_tokenizer()
    teacher = AutoModelForCausalLM.from_pretrained(tiny_lms["llama"]).eval()
    prompt = tok.apply_chat_template(records[0]["messages"][:-1], tokenize=True, add_generation_prompt=True)
    ids = torch.tensor([list(prompt["input_ids"])])
    for _ in range(5):
        with torch.no_grad():
            ids = torch.cat([ids, teacher(ids).logits[:, -1:].argmax(-1)], 1)
    assert tok.decode(ids[0, len(prompt["input_ids"]):], skip_special_tokens=True) == records[0]["completion"]
    assert cli("init-student", str(path), "--json")[0] == 0
    spec["output"] = "run2"
    spec["data"]["pseudo"] = str(labels)
    code, result = cli("distill", str(write_profile(spec)), "--json", "--quiet")
    assert code == 0, result


def test_check_probes_a_causal_profile_and_names_a_vocabulary_mismatch(tmp_path, tiny_lms, lm_data, write_profile
                                                                        ) -> None:
    spec = lm_profile(tiny_lms["gpt2"], lm_data["train"])
    spec["student"] = {"path": str(tiny_lms["gpt2"])}
    code, report = cli("check", str(write_profile(spec)), "--json")
    assert code == 0, report
    assert report["student"]["output_shape"][-1] == 64
    other = save_tiny_lm(tmp_path / "other", "gpt2")
    lm_tokenizer(extra=["zebra"]).save_pretrained(other)
    spec["student"] = {"path": str(other)}
    code, message = cli("check", str(write_profile(spec)))
    assert code == 2 and "vocabularies differ" in message


def test_check_accepts_prompt_only_unlabeled_rows_as_pseudo_label_does(tiny_lms, lm_data, write_profile) -> None:
    prompts = lm_data["train"].parent / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"tell me about {w}"}) + "\n" for w in ("cats", "dogs")))
    spec = lm_profile(tiny_lms["llama"], lm_data["train"])
    spec["student"] = {"path": str(tiny_lms["llama"])}
    spec["data"]["unlabeled"] = str(prompts)
    code, report = cli("check", str(write_profile(spec)), "--json")
    assert code == 0, report
    assert report["samples"]["unlabeled"] == 2
