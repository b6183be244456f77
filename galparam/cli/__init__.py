"""Console scripts: argument parsing and error reporting only; the work is in the library."""
