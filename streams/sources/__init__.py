"""Trade sources, chosen with ``--source``: ``synthetic``, ``replay:PATH``, ``ccxt:EXCHANGE``."""
