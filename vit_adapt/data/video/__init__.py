"""Video clips: PyAV decoding (`decode`), the official frame samplings (`sampling`), the dataset layouts
(`layouts`), clip augmentation (`augment`), the embedded moving-digits demo (`demo`) and the grain pipelines
(`pipeline`) that the video task (`vit_adapt.tasks.video`) reads."""
