"""Key manager: generation, loading and (in later work) rotation and audit."""
