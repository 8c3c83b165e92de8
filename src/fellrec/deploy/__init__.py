"""Deployment: the same federation across processes and machines, with Flower.

The ServerApp (:mod:`fellrec.deploy.server_app`) runs the strategy of a fellrec config through the
round protocol (:mod:`fellrec.federation.protocol`) and sends each client its own parameters and
round config; each ClientApp (:mod:`fellrec.deploy.client_app`) trains and evaluates one client's
:class:`~fellrec.training.host.client_module.ClientModule` on its own partition. Both read the same
fellrec YAML config as ``fellrec fit``. Needs the ``flower`` extra
(``pip install fellrec[flower]``).
"""

import importlib.util
import sys

if importlib.util.find_spec("flwr") is None:
    raise ImportError(
        "fellrec.deploy needs Flower: pip install 'fellrec[flower]' (flwr >= 1.42, which needs "
        f"Python >= 3.11; this is Python {sys.version_info.major}.{sys.version_info.minor})"
    )
