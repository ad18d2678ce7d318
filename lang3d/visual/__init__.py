"""What people look at: TensorBoard pictures and HParams summaries, point-splat renders, PLY clouds."""
