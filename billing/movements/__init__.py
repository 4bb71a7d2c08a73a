"""The keyed movements and the one frame they all run through, with the ``Store`` protocol
that frame asks of the database (``movements.store``). Imports ``billing.core`` only; the
stores that implement the protocol live above, in ``billing.storage``."""
