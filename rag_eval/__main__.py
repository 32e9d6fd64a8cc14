from rag_eval.cli import entrypoint

entrypoint()
