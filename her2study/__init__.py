"""her2study: intra- and peritumoral ultrasound radiomics studies, reproducible and tracked."""

__version__ = "0.1.0"
