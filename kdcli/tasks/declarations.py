"""The built-in tasks. Adding one: a declaration here, its data reader if new, docs/profile.md, tests."""

from __future__ import annotations

from kdcli.tasks.base import Task


class SequenceClassification(Task):
    name = "sequence-classification"
    has_classes = True
    text_pairs = True
    primary = ("metrics", "accuracy")
    retention = "accuracy"
    pipeline_tag = "text-classification"
    pseudo = "classes"
    hf_class = "AutoModelForSequenceClassification"
    distilbert_class = "DistilBertForSequenceClassification"


class ImageClassification(Task):
    """timm models: their adapter names the inputs and outputs (pixel_values -> logits)."""

    name = "image-classification"
    data = "image"
    has_classes = True
    primary = ("metrics", "accuracy")
    retention = "accuracy"
    pipeline_tag = "image-classification"
    onnx_inputs = ("pixel_values",)
    pseudo = "classes"


class MaskedLm(Task):
    name = "masked-lm"
    per_token = True
    pipeline_tag = "fill-mask"
    hf_class = "AutoModelForMaskedLM"
    distilbert_class = "DistilBertForMaskedLM"


class Embedding(Task):
    """Sentence embeddings: the token states pooled as the teacher's sentence-transformers pipeline does."""

    name = "embedding"
    output = "embedding"
    primary = ("agreement", "cosine_to_teacher")
    retention = "cosine_to_teacher"
    pipeline_tag = "feature-extraction"
    onnx_outputs = ("last_hidden_state", "sentence_embedding")
    hf_class = "AutoModel"
    distilbert_class = "DistilBertModel"


class CausalLm(Task):
    name = "causal-lm"
    data = "lm"
    per_token = True
    causal = True
    streamed = True
    retention = "perplexity"
    pipeline_tag = "text-generation"
    pseudo = "completions"
    cache = "sparse"
    hf_class = "AutoModelForCausalLM"


class TokenClassification(Task):
    """One class per word (NER, BIO/IOB2 tags): the first sub-token of each word carries its tag, as
    transformers' token-classification recipe aligns them; judged on entity-level F1 (seqeval's default)."""

    name = "token-classification"
    data = "tokens"
    has_classes = True
    per_token = True
    primary = ("metrics", "f1")
    retention = "f1"
    pipeline_tag = "token-classification"
    pseudo = "tags"
    hf_class = "AutoModelForTokenClassification"
    distilbert_class = "DistilBertForTokenClassification"
