"""The baseline and evaluate steps: scores at every Matryoshka dim, and what is written from them.

- :mod:`job.evaluate.retrieval`: sentence-transformers' ``InformationRetrievalEvaluator`` at every dim;
- :mod:`job.evaluate.guard`: general retrieval before and after (does fine-tuning forget?);
- :mod:`job.evaluate.export_scores`: every export scored beside the PyTorch model;
- :mod:`job.evaluate.report`, :mod:`job.evaluate.report_html`, :mod:`job.evaluate.plots`: the report, its page
  and its pictures; :mod:`job.evaluate.card`: the model card.
"""
