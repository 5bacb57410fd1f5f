"""Planning: which program computes which slice of which row (the work list), as torch operations."""
