"""Built-in architecture families (distillation students)."""
