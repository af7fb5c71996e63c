"""ewc-bench: data, task sequences, models, the EWC harness, timing and reports."""
