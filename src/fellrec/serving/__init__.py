"""Serving a split model's middle blocks from a process of their own (``model.transport: process``).

:mod:`fellrec.serving.block_host` is what the server holds for a run;
:mod:`fellrec.serving.block_server` listens for runs (``fellrec serve-blocks``). The client side is
:class:`fellrec.models.process_transport.ProcessTransport`.
"""
