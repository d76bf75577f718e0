"""Scripts that produce the measured tables in docs/ (run as modules: `python -m studies.<name>`)."""
