"""Public session datasets: preprocessing pipelines and a synthetic generator."""
