"""Evidence packs, exported where the evidence key lives: billing's own sub-package (the key never leaves this
process; the pack format and its offline verifier are services/runtime/evidence.py)."""
