"""The content policy: optional checks of input and output images, by a classifier behind one interface."""
