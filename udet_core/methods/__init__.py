"""Layer 5, methods: the Detector interface and registry (`base`), CRAFT, UniGenDet (GDUF, DIGA), the baselines."""
