"""The run-time (floor 4, DESIGN.md): training loop, evaluation, serving and export, summaries,
checkpoints and the model_dir, drawing. It builds on the pure core (model/), the networks (nets/), the
input pipeline (preprocessing/) and the metrics (metrics/); only the top-level scripts build on it."""
