"""The generic training path: freeze strategies on layer groups, optimizer groups and LR schedule, the feature cache,
one Lightning Trainer builder, prepare, fit and the LR range test. It names no task: a task supplies its parts."""
