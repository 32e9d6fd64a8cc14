"""Fine-tune an embedding model for RAG retrieval: prepare, baseline, Matryoshka fine-tune, evaluate."""

__all__ = ["__version__"]
__version__ = "0.1.0"
