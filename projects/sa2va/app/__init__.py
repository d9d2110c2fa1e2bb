"""A local web demo of a trained Sa2VA: upload an image, type a prompt, see the text, masks and
probability map, move a threshold slider. See :mod:`projects.sa2va.app.server` (the ``tools/demo_app.py``
back-end) and :mod:`projects.sa2va.app.page` (the single page it serves)."""

from .server import BadRequestError, DemoApp, encode_probs_png, make_server

__all__ = ["BadRequestError", "DemoApp", "encode_probs_png", "make_server"]
