"""Classic recommenders measured by fellrec's own evaluation: what the language model must beat.

Popularity is in every run already (:mod:`fellrec.metrics.popularity`); this package adds BPR-MF
(:mod:`fellrec.baselines.bpr`) and SASRec (:mod:`fellrec.baselines.sasrec`), each trained
centrally on all training interactions of the same split, selected on the validation users and
reported on the test users per client, overall and as balance, through the same metric code
(:mod:`fellrec.baselines.runs` writes them as run directories that ``fellrec report`` reads).
"""
