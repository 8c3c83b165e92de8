"""Seeing the balance: plots, comparison reports and wandb tables built from ``results.json``.

Everything here is a function of a run's results dictionary (the contents of ``results.json``):
a finished run's plots can be regenerated at any time, and ``fellrec report`` compares runs without
touching a model. ``runs`` loads and checks run directories, ``history`` reads series out of the
per-round history, ``plots`` draws matplotlib figures (Agg, no global state), ``tables`` builds
comparison tables, ``document`` renders them as Markdown and self-contained HTML, ``report``
assembles a report, and ``wandb_log`` sends round and test tables through Lightning's WandbLogger.
"""
