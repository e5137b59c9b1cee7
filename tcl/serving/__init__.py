"""``tcl serve``: a web page and JSON API for asking questions about images (``tcl.serving.app``)."""
