"""The train step: Matryoshka fine-tuning and everything it is made of.

- :mod:`job.train.finetune`: the trainer (the loss inside ``MatryoshkaLoss``, checkpoints, resume, precision);
- :mod:`job.train.losses`: the loss table (the one place a loss is added);
- :mod:`job.train.sampler`, :mod:`job.train.collate`, :mod:`job.train.token_cache`: batches;
- :mod:`job.train.negatives`: hard negatives, given or mined;
- :mod:`job.train.checkpoints`, :mod:`job.train.soup`, :mod:`job.train.merge`: trusted checkpoints, checkpoint
  averaging, weight interpolation with the base model;
- :mod:`job.train.distributed`: several processes or machines through torchrun;
- :mod:`job.train.memory`: will it fit, estimated before training.
"""
