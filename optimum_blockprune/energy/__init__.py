"""The energy stage: what removing blocks costs. ``EnergyModel`` (the quadratic model), its variants
(from real losses or gate gradients), loss scoring, gradients, chunked loss, partial-file resume and
the processes an analysis is shared among."""
