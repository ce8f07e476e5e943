"""Tiny real checkpoints built from configs (no network), and a profile writer."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    BertTokenizerFast,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

# The checkout under test, not whichever one the venv's editable install points at (git worktrees),
# for this process and for the `kdcli` / torchrun subprocesses the tests start.
ROOT = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])

WORDS = ["the", "a", "film", "movie", "is", "was", "good", "bad", "great", "awful", "fun", "dull", "story", "plot", "acting", "not", "very", "really", "and", "but", "it", "this", "that", "love", "hate", "best", "worst"]
LABELS = {"id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}


def tiny_bert_config(layers: int = 4, **extra: Any) -> BertConfig:
    """The one tiny BERT every test builds from; `extra` overrides any field."""
    fields = {"vocab_size": 64, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 48,
              "max_position_embeddings": 64, "type_vocab_size": 2}
    return BertConfig(num_hidden_layers=layers, **{**fields, **extra})


def write_tokenizer(folder: Path) -> BertTokenizerFast:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    vocab += [f"[unused{i}]" for i in range(64 - len(vocab))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _save(model: torch.nn.Module, folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    with torch.no_grad():  # token types matter in the fold property: make row 0 non-zero
        for name, param in model.named_parameters():
            if "token_type_embeddings" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(folder)
    write_tokenizer(folder)
    return folder


@pytest.fixture()
def one_thread():
    """Tiny models: one thread is faster, and far faster when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def bert_cls(models_dir: Path) -> Path:
    torch.manual_seed(0)
    return _save(BertForSequenceClassification(tiny_bert_config(num_labels=2, **LABELS)).eval(),
                 models_dir / "bert-cls", 0)


@pytest.fixture(scope="session")
def bert_mlm(models_dir: Path) -> Path:
    torch.manual_seed(1)
    return _save(BertForMaskedLM(tiny_bert_config()).eval(), models_dir / "bert-mlm", 1)


@pytest.fixture(scope="session")
def bert_encoder(models_dir: Path) -> Path:
    torch.manual_seed(2)
    return _save(BertModel(tiny_bert_config()).eval(), models_dir / "bert-enc", 2)


@pytest.fixture(scope="session")
def roberta_cls(models_dir: Path) -> Path:
    torch.manual_seed(3)
    config = RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                           intermediate_size=48, max_position_embeddings=70, pad_token_id=0, bos_token_id=2,
                           eos_token_id=3, num_labels=2, **LABELS)
    return _save(RobertaForSequenceClassification(config).eval(), models_dir / "roberta-cls", 3)


@pytest.fixture(scope="session")
def distilbert_cls(models_dir: Path) -> Path:
    torch.manual_seed(4)
    config = DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, hidden_dim=48,
                              max_position_embeddings=64, num_labels=2, **LABELS)
    return _save(DistilBertForSequenceClassification(config).eval(), models_dir / "distilbert-cls", 4)


@pytest.fixture(scope="session")
def timm_resnet(models_dir: Path) -> Path:
    import timm
    from safetensors.torch import save_file
    torch.manual_seed(5)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    path = models_dir / "resnet18.safetensors"
    save_file(model.state_dict(), str(path))
    return path


@pytest.fixture(scope="session")
def timm_vit(models_dir: Path) -> Path:
    import timm
    torch.manual_seed(6)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32,
                              patch_size=8, depth=4, embed_dim=48, num_heads=2)
    path = models_dir / "vit.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture()
def sst_tiny(tmp_path: Path) -> Path:
    """A small labelled TSV in SST-2's shape, with words the tiny tokenizer knows."""
    rows = ["sentence\tlabel"]
    generator = torch.Generator().manual_seed(0)
    for i in range(48):
        n = int(torch.randint(3, 12, (1,), generator=generator))
        words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (n,), generator=generator)]
        rows.append(f"{' '.join(words)}\t{i % 2}")
    path = tmp_path / "sst.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture()
def write_profile(tmp_path: Path) -> Callable[..., Path]:
    """Write a profile dict (or YAML text) to tmp_path and return its path."""
    def write(content: dict | str, name: str = "profile.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path
    return write
