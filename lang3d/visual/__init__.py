"""What people look at: TensorBoard pictures, point-splat renders, PLY clouds."""
