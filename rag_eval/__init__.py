"""rag_eval: score retrieval through a real Chroma vector store at every Matryoshka dimension.

Commands (``rag-eval``, also ``python -m rag_eval``): ``index`` writes one Chroma collection per
(model, dim); ``score`` queries the held-out questions against them and sets the numbers beside
the exact in-memory evaluator's; ``query`` is the retrieval demo.
"""

SCHEMA_VERSION = 1  # written into every collection's metadata as "rag_eval"
