"""Training plumbing: the CLI, checkpoints and exact resume, synchronised BatchNorm, schedules, collectives, output
writers, atomic writes, timing."""
