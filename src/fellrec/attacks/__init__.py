"""What an honest-but-curious server reads from the messages it receives (pure scoring, L0).

The attacks on the hidden states at the split live with the split model
(:mod:`fellrec.models.inversion`, :mod:`fellrec.models.front_copy`); this package scores the other
messages: each client's exchanged parameters (:mod:`fellrec.attacks.item_leak`) and its reports
(:mod:`fellrec.attacks.reports`), with the scoring functions of :mod:`fellrec.attacks.scoring`.
"""
