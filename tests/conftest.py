"""Tiny real checkpoints built from configs (no network), and a profile writer."""

from __future__ import annotations

import json
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
    tokenizer = BertTokenizerFast.from_pretrained(folder, do_lower_case=True)  # transformers 4.x and 5.x alike
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


@pytest.fixture(autouse=True)
def _in_its_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own folder: a relative path given on the command line (--set output=x)
    lands there, never in the checkout."""
    monkeypatch.chdir(tmp_path)


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


# --- causal LMs: tiny random Llama / Qwen2 / GPT-2 sharing one word-level tokenizer with a chat template ---

LM_SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
LM_VOCAB = 64
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def lm_tokenizer(vocab_size: int = LM_VOCAB, extra: list[str] | None = None) -> Any:
    """Byte-level BPE over single characters (no merges): transformers' model-specific tokenizer classes
    (Qwen2Tokenizer rebuilds from vocab and merges) read it back the same. BOS prepended, a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    chars = LM_SPECIAL + (extra or []) + ["Ġ"] + [chr(i) for i in range(97, 123)]
    chars += [f"<x{i}>" for i in range(vocab_size - len(chars))]
    tok = Tokenizer(models.BPE({c: i for i, c in enumerate(chars[:vocab_size])}, [], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=LM_SPECIAL[4:])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_lm_config(family: str, layers: int = 4, vocab_size: int = LM_VOCAB, **extra: Any) -> Any:
    from transformers import GPT2Config, LlamaConfig, Qwen2Config
    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=layers, n_head=2, n_positions=128, **ids, **extra)
    common = {"vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": layers,
              "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 128, **ids}
    if family == "llama":
        return LlamaConfig(**{**common, "tie_word_embeddings": True, **extra})
    return Qwen2Config(**{**common, "tie_word_embeddings": False, **extra})


def save_tiny_lm(folder: Path, family: str, seed: int = 0, layers: int = 4, vocab_size: int = LM_VOCAB,
                 tokenizer_vocab: int = LM_VOCAB) -> Path:
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_lm_config(family, layers, vocab_size))
    model.save_pretrained(folder)
    lm_tokenizer(tokenizer_vocab).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lms(models_dir: Path) -> dict[str, Path]:
    """family -> a 4-layer random causal LM folder (Llama with tied embeddings, Qwen2 and GPT-2)."""
    return {family: save_tiny_lm(models_dir / f"lm-{family}", family) for family in ("llama", "qwen2", "gpt2")}


def write_lm_data(folder: Path) -> dict[str, Path]:
    """train.txt (documents), pairs.jsonl (prompt/completion), chat.jsonl (messages), prompts.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)

    def sentence(n: int) -> str:
        return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=gen))
    docs = [sentence(2 + i % 5) for i in range(24)]
    (folder / "train.txt").write_text("\n".join(docs) + "\n")
    pairs = [{"prompt": sentence(1 + i % 3), "completion": " " + sentence(1 + i % 3)} for i in range(16)]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    chats = [{"messages": [{"role": "user", "content": sentence(2)}, {"role": "assistant", "content": sentence(2)}]}
             for _ in range(8)]
    (folder / "chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    (folder / "prompts.txt").write_text("\n".join(sentence(2) for _ in range(6)) + "\n")
    return {"train": folder / "train.txt", "pairs": folder / "pairs.jsonl", "chat": folder / "chat.jsonl",
            "prompts": folder / "prompts.txt"}


@pytest.fixture()
def lm_data(tmp_path: Path) -> dict[str, Path]:
    return write_lm_data(tmp_path / "lm-data")
