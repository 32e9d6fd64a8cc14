"""`job synthesize`: documents in, grounded (question, passage) pairs out.

- :mod:`job.synth.documents`: reading a folder of documents and cutting it into chunks;
- :mod:`job.synth.llm`: the prompt, the OpenAI-compatible client and the answer cache;
- :mod:`job.synth.grounding`: the grounding filter (a question names only what its passage names);
- :mod:`job.synth.synthesize`: the command itself: the filters, the round-trip check, the written pairs.
"""
