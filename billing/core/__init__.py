"""The bottom layer: records, rules, settlement arithmetic, event detection, results,
validation and settings. Pure: no database, no broker, no clock of its own. Imports nothing
else of ``billing``."""
