"""The data stage: text loading, the one token packer, calibration batches, the bundled demo assets,
and atomic file writes (files appear whole or not at all)."""
