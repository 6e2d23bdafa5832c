"""Layer 1, core: errors, atomic io, content keys and artifacts, provenance, paths, progress, configs."""
