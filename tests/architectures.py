"""Tiny random-weight models of every architecture users bring, built offline in seconds.

Each is a real transformers model class (BERT, MPNet, XLM-RoBERTa, ModernBERT, a Qwen3 decoder) with a tokenizer
trained here by the ``tokenizers`` library on the test texts, saved as a sentence-transformers folder with the
pooling that architecture's real embedders use:

==============  ============================  ===========================================================
name            like                          what differs
==============  ============================  ===========================================================
bert-cls        BAAI/bge-base-en-v1.5         CLS pooling (the seed's own model)
bert-mean       all-MiniLM-L6-v2              mean pooling (the demo model)
mpnet           all-mpnet-base-v2             MPNet's relative attention, ``<s>``/``</s>`` specials
xlm-roberta     multilingual-e5, bge-m3       SentencePiece-style Unigram vocabulary, padding id 1
modernbert      gte-modernbert                rotary embeddings, alternating local/global attention
qwen3-last      Qwen3-Embedding               a decoder: last-token pooling, LEFT padding, EOS appended
bert-prompts    e5 ('query: ' / 'passage: ')  prompts saved in the model's config
==============  ============================  ===========================================================
"""

from __future__ import annotations

import json
from pathlib import Path

ARCHITECTURES = ("bert-cls", "bert-mean", "mpnet", "xlm-roberta", "modernbert", "qwen3-last", "bert-prompts")
HIDDEN = 32


def _wordpiece(texts, specials, cls, sep, lowercase=True):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing

    tok = Tokenizer(models.WordPiece(unk_token=specials[1]))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    tok.post_processor = TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B {sep}",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )  # fmt: skip
    return tok


def _unigram(texts, specials, cls, sep):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=300, special_tokens=specials, unk_token="<unk>"))
    tok.post_processor = TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} {sep} $B {sep}",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )  # fmt: skip
    return tok


def _bpe(texts, specials, eos: str | None = None, bos: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    if eos or bos:
        single = " ".join(x for x in (bos, "$A", eos) if x)
        pair = " ".join(x for x in (bos, "$A", eos, "$B", eos) if x)
        tok.post_processor = TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, tok.token_to_id(t)) for t in (bos, eos) if t]
        )
    return tok


def build(name: str, root: Path, texts: list[str]) -> Path:
    """A sentence-transformers folder of architecture ``name`` under ``root`` (see the module's table)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(0)
    raw = root / f"{name}-raw"
    small = dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    pooling, tokenizer_kwargs, prompts = "mean", {}, None
    if name in ("bert-cls", "bert-mean", "bert-prompts"):
        from transformers import BertConfig, BertModel

        tok = _wordpiece(texts, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[CLS]", "[SEP]")
        tokenizer_kwargs = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                mask_token="[MASK]")  # fmt: skip
        model = BertModel(BertConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=128, **small))
        pooling = "cls" if name == "bert-cls" else "mean"
        if name == "bert-prompts":
            prompts = {"query": "query: ", "document": "passage: "}
    elif name == "mpnet":
        from transformers import MPNetConfig, MPNetModel

        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = _wordpiece(texts, [specials[1], specials[3], specials[0], specials[2], specials[4]], "<s>", "</s>")
        tokenizer_kwargs = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                                cls_token="<s>", sep_token="</s>", mask_token="<mask>")  # fmt: skip
        model = MPNetModel(MPNetConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=130,
                                       pad_token_id=tok.token_to_id("<pad>"), **small))  # fmt: skip
    elif name == "xlm-roberta":
        from transformers import XLMRobertaConfig, XLMRobertaModel

        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4: padding id 1 as in the real vocabulary
        tok = _unigram(texts, specials, "<s>", "</s>")
        tokenizer_kwargs = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                                cls_token="<s>", sep_token="</s>", mask_token="<mask>")  # fmt: skip
        model = XLMRobertaModel(XLMRobertaConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=130,
                                                 pad_token_id=1, **small))  # fmt: skip
    elif name == "modernbert":
        from transformers import ModernBertConfig, ModernBertModel

        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = _wordpiece(texts, specials, "[CLS]", "[SEP]")
        tokenizer_kwargs = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                mask_token="[MASK]")  # fmt: skip
        ids = {t: tok.token_to_id(t) for t in specials}
        model = ModernBertModel(ModernBertConfig(
            vocab_size=tok.get_vocab_size(), max_position_embeddings=128, global_attn_every_n_layers=2,
            local_attention=16, pad_token_id=ids["[PAD]"], cls_token_id=ids["[CLS]"], sep_token_id=ids["[SEP]"],
            bos_token_id=ids["[CLS]"], eos_token_id=ids["[SEP]"], **small,
        ))  # fmt: skip
    elif name == "qwen3-last":
        from transformers import Qwen3Config, Qwen3Model

        specials = ["<|endoftext|>", "<|im_start|>"]
        tok = _bpe(texts, specials, eos="<|endoftext|>")
        tokenizer_kwargs = dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>", padding_side="left")
        model = Qwen3Model(Qwen3Config(
            vocab_size=tok.get_vocab_size(), max_position_embeddings=128, num_key_value_heads=1, head_dim=16,
            pad_token_id=tok.token_to_id("<|endoftext|>"), eos_token_id=tok.token_to_id("<|endoftext|>"), **small,
        ))  # fmt: skip
        pooling = "lasttoken"
    else:
        raise ValueError(f"unknown architecture {name!r}; one of {ARCHITECTURES}")
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, **tokenizer_kwargs)
    model.save_pretrained(raw)
    hf_tok.save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=64)
    st = SentenceTransformer(
        modules=[transformer, Pooling(HIDDEN, pooling), Normalize()], device="cpu", prompts=prompts,
        default_prompt_name=None,
    )  # fmt: skip
    out = root / name
    st.save(str(out))
    (out / "architecture.json").write_text(json.dumps({"name": name, "pooling": pooling}))
    return out
