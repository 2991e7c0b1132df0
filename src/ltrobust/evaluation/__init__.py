"""Evaluation: the attack cascade over a test split (per-sample flags, chunked and resumable), the metrics
of SPEC 4 (per-class, head/body/tail, many/medium/few), inference-stage adjustments, the gradient-masking
audit, and loading a trained run folder back into its deployed model."""
