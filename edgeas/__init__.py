"""edgeas: unified anomaly segmentation from normal images to an inspection station.

The core package (config, metadata, preprocessing, metrics, CLI) imports neither
torch nor TensorRT; the stage packages `edgeas.train`, `edgeas.export`,
`edgeas.calibration` and `edgeas.runtime` bring their own dependencies.
"""

__version__ = "0.1.0"
