"""`job export`: the fine-tuned model for other serving stacks.

- :mod:`job.export.onnx`: ONNX float32 and int8 exports inside ``model/``, checked against the model;
- :mod:`job.export.runtime`: encoding with an export through ONNX Runtime (the same vectors path);
- :mod:`job.export.portable`: a saved model that older sentence-transformers and plain transformers load.
"""
