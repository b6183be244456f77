"""Architecture searches: a resumable grid, KerasTuner (local or distributed) and AutoKeras, and their dashboard."""
