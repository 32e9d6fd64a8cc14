"""Fine-tune an embedding model for RAG retrieval: prepare, baseline, Matryoshka fine-tune, evaluate, export.

The run itself sits here (configuration, run directory, steps, pipeline, command line); each concern has its folder:
:mod:`job.data` (prepare), :mod:`job.synth` (documents to pairs), :mod:`job.train` (fine-tuning and what it is made
of), :mod:`job.evaluate` (scores, guard, report, card), :mod:`job.export` (ONNX and portable models).
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
