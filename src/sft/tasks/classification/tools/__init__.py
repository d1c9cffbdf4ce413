"""Classification tools that act before training: audit (label issues), rank (which backbone), transferability
scores, and the rule behind `strategy: auto`."""
