"""Text normalisation as TCL/ALBEF apply it before tokenisation (TCL.md Part B §5.4)."""

import re

_DELETED = re.compile(r"[,.'!?\"()*#:;~]")
_SPACED = re.compile(r"[-/]")
_SPACES = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int = 30) -> str:
    """Lower-cases, deletes ``, . ' ! ? " ( ) * # : ; ~``, turns ``-`` and ``/`` into spaces, collapses white space,
    maps ``<person>`` to ``person`` and keeps the first ``max_words`` words."""
    caption = _SPACED.sub(" ", _DELETED.sub("", caption.lower())).replace("<person>", "person")
    caption = _SPACES.sub(" ", caption).rstrip("\n").strip(" ")
    return " ".join(caption.split(" ")[:max_words])


def pre_question(question: str, max_words: int = 30) -> str:
    """Like ``pre_caption`` without collapsing white space (as TCL), keeping the first ``max_words`` words."""
    question = _SPACED.sub(" ", _DELETED.sub("", question.lower())).rstrip(" ")
    return " ".join(question.split(" ")[:max_words])
