"""The top layer, for operators and the product: ledger pages, the audit and the ledger chain
it checks (``reads.repair`` rewrites a broken chain, the one write here), and the
processor's status. May import every layer below."""
