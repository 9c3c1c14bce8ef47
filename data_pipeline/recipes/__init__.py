"""Pair recipes: rpo (reversed-constraint pairs), iopo (input-output quadruples), dpo (imports and baseline)."""
