"""Hash banks: the bank table materialised from the compacted `mod.banks` topic, and its indexes."""
