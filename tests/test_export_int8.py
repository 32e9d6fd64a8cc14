"""The int8 export's recipe, the probe check at load, and an export that fails costing only itself (issue #30).

Real exports of the tiny random models (BERT from conftest; MPNet and XLM-R built here), real ONNX Runtime.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from job.errors import JobError
from job.export import onnx as E
from job.export.onnx import EXPORTS, ExportRefused, ExportsFailed, export_model, open_export, read_manifest, status

QUIET = lambda m: None  # noqa: E731
LEGACY = "onnx/model_qint8_avx512_vnni.onnx"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_path):
    folder = tmp_path_factory.mktemp("int8") / "model"
    shutil.copytree(tiny_model_path, folder)
    export_model(folder, ["onnx", "onnx-int8"], echo=QUIET)
    return folder


def _copy(folder, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(folder, out)
    return out


def _rewrite_manifest(folder, name, **entry):
    manifest = read_manifest(folder)
    manifest["exports"][name].update(entry)
    (folder / E.MANIFEST).write_text(json.dumps(manifest))


def _vouch_for(folder, name):
    """Make the manifest's digest match the file now there: only the probe check can tell it is wrong."""
    path = folder / E.export_file(folder, name)
    _rewrite_manifest(folder, name, bytes=path.stat().st_size, sha256=E.file_digest(path))
    assert status(folder, name) == "ok"


def test_an_int8_export_leaves_the_job_s_warnings_on(tmp_path, tiny_model_path, caplog):
    """The quantizer's advice was silenced by setting the root logger to ERROR for good: every warning the job logged
    after an export (a damaged merge_scores.json, a publish retry) was lost."""
    import logging

    root = logging.getLogger()
    before = root.level
    export_model(_copy(tiny_model_path, tmp_path), ["onnx-int8"], echo=QUIET)
    assert root.level == before
    caplog.clear()
    logging.getLogger("job.train.merge").warning("still heard")
    assert "still heard" in caplog.text


# --- the recipe ---------------------------------------------------------------------------------------------------
def test_int8_keeps_embeddings_layernorms_and_ffn_outputs_in_float32(exported):
    import onnx

    assert (exported / "onnx" / "model_qint8.onnx").is_file() and not (exported / LEGACY).exists()
    q = read_manifest(exported)["exports"]["onnx-int8"]["quantization"]
    assert q["recipe"] == "ffn-output-float" and q["weight_type"] == "QInt8"
    assert q["per_channel"] is True and q["reduce_range"] is True and q["op_types_to_quantize"] == ["MatMul"]
    # the two layers' FFN output projections, found from the graph, with the reason
    assert sorted(q["float_nodes"]) == [f"/inner/encoder/layer.{i}/output/dense/MatMul" for i in (0, 1)]
    assert all("input from Erf" in why and "64x32" in why for why in q["float_nodes"].values())
    assert len(q["int8_nodes"]) == 2 * 5  # q, k, v, attention output, FFN input per layer
    graph = onnx.load(str(exported / "onnx" / "model_qint8.onnx")).graph
    ops = {n.name: n.op_type for n in graph.node}
    assert all(ops[name] == "MatMul" for name in q["float_nodes"])  # still float MatMuls
    assert not [n for n in graph.node if n.op_type == "MatMul" and n.name in q["int8_nodes"]]
    assert "LayerNormalization" in ops.values()
    gathers = [n for n in graph.node if n.op_type == "Gather"]
    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert any(n.input[0] in floats and "word_embeddings" in n.input[0] for n in gathers)  # embeddings: float32
    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    assert not [i.name for i in graph.initializer if "embeddings" in i.name and i.data_type in eight_bit]
    assert [i.name for i in graph.initializer if i.data_type in eight_bit]  # and the rest is int8


def _tiny(kind, root):
    """A tiny random MPNet or XLM-R sentence-transformer (vocabulary trained on the test pairs)."""
    import torch
    import transformers
    from conftest import make_pairs
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing

    rows = make_pairs(5)
    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    texts = [r["question"] for r in rows] + [r["context"] for r in rows]
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    tok.post_processor = TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))]
    )
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        cls_token="<s>", sep_token="</s>", model_input_names=["input_ids", "attention_mask"],
    )  # fmt: skip
    sizes = dict(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=48, max_position_embeddings=130, pad_token_id=0)  # fmt: skip
    if kind == "mpnet":
        config, cls = transformers.MPNetConfig(**sizes), transformers.MPNetModel
    else:
        config, cls = transformers.XLMRobertaConfig(**sizes, type_vocab_size=1), transformers.XLMRobertaModel
    torch.manual_seed(1)
    raw = root / kind / "raw"
    cls(config).save_pretrained(raw)
    hf.save_pretrained(raw)
    model = SentenceTransformer(
        modules=[Transformer(str(raw), max_seq_length=64), Pooling(32, "mean"), Normalize()], device="cpu"
    )
    model.save(str(root / kind / "model"))
    return root / kind / "model"


@pytest.mark.parametrize("kind", ["mpnet", "xlmr"])
def test_ffn_output_projections_are_found_by_structure_in_mpnet_and_xlmr(kind, tmp_path):
    folder = _tiny(kind, tmp_path)
    manifest = export_model(folder, ["onnx-int8"], echo=QUIET)
    q = manifest["exports"]["onnx-int8"]["quantization"]
    assert len(q["float_nodes"]) == 2 and len(q["int8_nodes"]) == 2 * 5
    assert all("input from Erf" in why and "48x32" in why for why in q["float_nodes"].values())
    assert open_export(folder, "onnx-int8").probe["min_cosine"] >= E.INT8_MIN_COSINE
    # neither node names nor the config's sizes are needed: with every node renamed and no sizes, the same nodes
    pre = tmp_path / "pre.onnx"
    E._onnx_graph(_load(folder), tmp_path / "fp32.onnx")
    graph = E._prepare_graph(tmp_path / "fp32.onnx", pre).graph
    found = E.find_ffn(graph)
    renamed = {}
    for i, node in enumerate(graph.node):
        renamed[node.name], node.name = f"n{i}", f"n{i}"
    assert {renamed.get(n, n) for n in q["float_nodes"]} == set(E.find_ffn(graph)["down"]) != set()
    assert len(found["up"]) == 2 and not set(found["up"]) & set(found["down"])


def _load(folder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu")


def test_the_fallback_recipe_keeps_the_whole_ffn_in_float32(tmp_path, tiny_model_path, monkeypatch):
    folder = _copy(tiny_model_path, tmp_path)
    real = E._quantize

    def worse_unless_ffn_float(pre, target, float_nodes):  # the first recipe "fails" its check
        if len(float_nodes) > 2:
            real(pre, target, float_nodes)
        else:
            _garbage(target, tmp_path, folder)

    monkeypatch.setattr(E, "_quantize", worse_unless_ffn_float)
    q = export_model(folder, ["onnx-int8"], echo=QUIET)["exports"]["onnx-int8"]["quantization"]
    assert q["recipe"] == "ffn-float" and [t["recipe"] for t in q["tried"]] == ["ffn-output-float", "ffn-float"]
    assert q["tried"][0]["min_cosine"] < E.INT8_MIN_COSINE <= q["tried"][1]["min_cosine"]
    assert len(q["float_nodes"]) == 4 and len(q["int8_nodes"]) == 2 * 4  # attention only
    assert any("FFN input projection" in why for why in q["float_nodes"].values())


# --- the probe check at load --------------------------------------------------------------------------------------
def _other_model(source, tmp_path):
    """``source`` with other weights (same tokenizer and configs): vectors unrelated to the original's."""
    import torch

    folder = tmp_path / "other"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("onnx", E.MANIFEST))
    model = _load(folder)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.save(str(folder))
    return folder


def _garbage(target, tmp_path, model=None):
    """Overwrite ``target`` (an export of ``model``, by default the folder two levels up) with the float32 export of
    a different model that shares its tokenizer: a well-formed graph that gives wrong vectors."""
    other = tmp_path / "garbage" / "other"
    if not (other / "onnx" / "model.onnx").is_file():
        _other_model(model or target.parent.parent, tmp_path / "garbage")
        export_model(other, ["onnx"], echo=QUIET)
    shutil.copyfile(other / "onnx" / "model.onnx", target)


def test_a_wrong_export_is_refused_at_load_by_the_probe_check(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    target = folder / EXPORTS["onnx-int8"].file
    _garbage(target, tmp_path)
    _vouch_for(folder, "onnx-int8")  # digest and size match: only the vectors can tell
    with pytest.raises(ExportRefused) as err:
        open_export(folder, "onnx-int8")
    assert err.value.min_cosine < E.INT8_MIN_COSINE and err.value.name == "onnx-int8"
    assert str(target) in err.value.problem and "minimum cosine" in err.value.problem
    assert f"{err.value.min_cosine:.4f}" in err.value.problem and "on this machine" in err.value.problem
    assert "--backend onnx or torch" in err.value.fix and "--force" in err.value.fix
    assert isinstance(err.value, JobError)  # exit 2 with one paragraph
    # the float32 export is untouched and still passes
    assert open_export(folder, "onnx").probe["min_cosine"] > E.FP32_MIN_COSINE
    # a float32 export is held to float32 agreement: the same wrong file under its name is refused too
    shutil.copyfile(target, folder / EXPORTS["onnx"].file)
    _vouch_for(folder, "onnx")
    with pytest.raises(ExportRefused):
        open_export(folder, "onnx")


def test_the_probe_vectors_are_written_with_the_exports(exported):
    manifest = read_manifest(exported)
    probe = json.loads((exported / E.PROBE_FILE).read_text())
    assert manifest["probe"]["sha256"] == E.file_digest(exported / E.PROBE_FILE)
    assert probe["texts"] == list(E.EXPORT_PROBE_TEXTS) and np.asarray(probe["vectors"]).shape == (16, 32)
    ref = _load(exported).encode(probe["texts"], normalize_embeddings=True)
    assert np.abs(ref - np.asarray(probe["vectors"])).max() < 1e-6
    assert E.reference(exported)[2] == "probe file"


def test_a_probe_file_that_does_not_match_its_manifest_is_not_trusted(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    probe = json.loads((folder / E.PROBE_FILE).read_text())
    probe["vectors"] = [[0.0] * len(v) for v in probe["vectors"]]  # would refuse every export
    (folder / E.PROBE_FILE).write_text(json.dumps(probe))
    texts, vectors, where = E.reference(folder)
    assert where == "PyTorch weights, encoded now" and np.abs(vectors).sum() > 0
    assert open_export(folder, "onnx").probe["min_cosine"] > E.FP32_MIN_COSINE


def test_an_export_of_an_older_version_loads_under_its_old_name_and_is_still_checked(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    (folder / EXPORTS["onnx-int8"].file).rename(folder / LEGACY)  # a run exported before the rename
    _rewrite_manifest(folder, "onnx-int8", file=LEGACY)
    manifest = read_manifest(folder)
    del manifest["probe"]  # and before the probe file
    (folder / E.MANIFEST).write_text(json.dumps(manifest))
    (folder / E.PROBE_FILE).unlink()
    assert status(folder, "onnx-int8") == "ok"
    model = open_export(folder, "onnx-int8")
    assert model.file_name == LEGACY and model.probe["reference"] == "PyTorch weights, encoded now"
    _garbage(folder / LEGACY, tmp_path)
    _vouch_for(folder, "onnx-int8")
    with pytest.raises(ExportRefused):
        open_export(folder, "onnx-int8")
    # made again: the new name, the old file gone, the manifest says so
    export_model(folder, ["onnx-int8"], force=True, echo=QUIET)
    assert (
        not (folder / LEGACY).exists()
        and read_manifest(folder)["exports"]["onnx-int8"]["file"] == "onnx/model_qint8.onnx"
    )
    assert open_export(folder, "onnx-int8").probe["reference"] == "probe file"


def test_serve_auto_passes_over_a_refused_export_and_a_named_one_is_an_error(exported, tmp_path):
    from job.layout import REPORT_RECORD, RunDir
    from rag_eval.sources import FINETUNED, ModelSpec, Sources, choose_backend, load_models

    folder = _copy(exported, tmp_path)
    _garbage(folder / EXPORTS["onnx-int8"].file, tmp_path)
    _vouch_for(folder, "onnx-int8")
    run = tmp_path / "run"
    row = {"status": "ok", "flagged": False, "question_ms": 1.0, "dims": {}}
    speeds = {"pytorch": 10, "onnx": 20, "onnx-int8": 40}
    table = {"max_drop_points": 1.0, "models": {n: {**row, "texts_per_s": v} for n, v in speeds.items()}}
    (run / REPORT_RECORD).parent.mkdir(parents=True)
    (run / REPORT_RECORD).write_text(json.dumps({"exports": table}))
    sources = Sources([ModelSpec(FINETUNED, str(folder), name="tiny", export_dir=str(folder))], RunDir(run))
    warnings = []
    chosen, why = choose_backend(sources, "auto", warn=warnings.append)
    assert chosen == "onnx" and "onnx-int8 refused on this machine" in why
    assert len(warnings) == 1 and "onnx-int8" in warnings[0] and str(folder / EXPORTS["onnx-int8"].file) in warnings[0]
    assert "minimum cosine" in warnings[0] and "serving on onnx instead" in warnings[0]
    # with the float32 export refused too: torch
    shutil.copyfile(folder / EXPORTS["onnx-int8"].file, folder / EXPORTS["onnx"].file)
    _vouch_for(folder, "onnx")
    warnings.clear()
    assert choose_backend(sources, "auto", warn=warnings.append)[0] == "torch" and len(warnings) == 2
    # asked for by name: refused with the fix
    assert choose_backend(sources, "onnx-int8") == ("onnx-int8", "asked for")
    with pytest.raises(ExportRefused) as err:
        load_models(sources.models, backend="onnx-int8")
    assert "--backend onnx or torch" in err.value.fix


# --- an export that fails costs only itself -----------------------------------------------------------------------
def test_a_crashing_quantizer_costs_only_the_int8_export(tmp_path, tiny_model_path, monkeypatch, capsys):
    folder = _copy(tiny_model_path, tmp_path)

    def crash(*args, **kwargs):
        raise RuntimeError("quantizer exploded")

    monkeypatch.setattr(E, "_quantize", crash)
    messages = []
    manifest = export_model(folder, ["onnx", "onnx-int8"], echo=messages.append, strict=False)
    assert status(folder, "onnx") == "ok" and status(folder, "onnx-int8") == "failed"
    assert "RuntimeError: quantizer exploded" in manifest["failed"]["onnx-int8"]["why"]
    assert not (folder / EXPORTS["onnx-int8"].file).exists()
    assert any("onnx-int8 FAILED" in m for m in messages)
    # strict (the default, `job export --model-dir`): the same, then an error naming it; not tried again unasked
    with pytest.raises(ExportsFailed) as err:
        export_model(folder, ["onnx", "onnx-int8"], echo=QUIET)
    assert list(err.value.failures) == ["onnx-int8"] and "quantizer exploded" in err.value.problem
    assert "--force" in err.value.fix
    from job.cli import main

    assert main(["export", "--model-dir", str(folder), "--export", "onnx,onnx-int8"]) == 2
    assert "onnx-int8" in capsys.readouterr().err
    with pytest.raises(JobError) as err:  # what `rag-eval serve --backend onnx-int8` says
        open_export(folder, "onnx-int8")
    assert "failed when it was made" in err.value.problem and "quantizer exploded" in err.value.problem
    monkeypatch.undo()
    export_model(folder, ["onnx-int8"], force=True, echo=QUIET)  # --force tries again
    assert status(folder, "onnx-int8") == "ok" and "onnx-int8" not in read_manifest(folder).get("failed", {})


def test_a_failed_export_still_gets_the_report_and_the_card_and_exit_2(
    tmp_path, tiny_model_path, pairs_file, monkeypatch, capsys
):
    from job.cli import main

    monkeypatch.setattr(E, "INT8_MIN_COSINE", 1.01)  # no int8 export can pass
    run = tmp_path / "run"
    args = ["run", "--run-dir", str(run), "--model", str(tiny_model_path), "--data", str(pairs_file),
            "--batch-size", "8", "--epochs", "1", "--eval-batch-size", "16", "--matryoshka-dims", "32,16",
            "--export", "onnx,onnx-int8"]  # fmt: skip
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert "onnx-int8" in err and "failed" in err and "report.md" in err and "--force" in err
    assert "1.01" in err  # the limit it missed
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    rows = metrics["exports"]["models"]
    assert rows["onnx"]["status"] == "ok" and rows["onnx"]["dims"]["32"]["ndcg@10"] > 0  # scored as usual
    assert rows["onnx-int8"]["status"] == "failed" and "minimum cosine" in rows["onnx-int8"]["why"]
    assert metrics["exports"]["baseline_exports"]["onnx-int8"]["status"] == "failed"
    for text in ((run / "report" / "report.md").read_text(), (run / "model" / "README.md").read_text()):
        assert "onnx-int8 FAILED" in text and "Failed exports" in text and "minimum cosine" in text
    assert (run / "model" / "onnx" / "model.onnx").is_file() and not (
        run / "model" / "onnx" / "model_qint8.onnx"
    ).exists()
    # rag-eval serve --backend auto never picks it
    from job.evaluate.export_scores import pick_backend

    assert pick_backend(metrics["exports"], ["onnx", "onnx-int8"]) == "onnx"
    # a rerun redoes nothing, and says so again
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out.count("already done for this configuration, skipping") == 4 and "onnx-int8" in err
    # `job export --force` tries again: still failing, the report is rewritten all the same; then it passes
    again = ["export", *args[1:], "--force"]
    assert main(again) == 2 and "onnx-int8" in capsys.readouterr().err
    assert json.loads((run / "report" / "metrics.json").read_text())["exports"]["models"]["onnx"]["status"] == "ok"
    monkeypatch.undo()
    assert main(again) == 0
    rows = json.loads((run / "report" / "metrics.json").read_text())["exports"]["models"]
    assert rows["onnx-int8"]["status"] == "ok" and (run / "model" / "onnx" / "model_qint8.onnx").is_file()
    assert main(args) == 0  # and the run is whole
