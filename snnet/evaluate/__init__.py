"""Evaluation and deployment (eval.py, predict.py): the one-pass sweep, results files, Pareto
frontier and budget picking, latency, export, prediction and pre-training stitch scores."""
