"""A location's content made from files: ``try_files``, ``index``, ``autoindex`` and static
files (:mod:`wsgate.content.files`), sent by :mod:`wsgate.content.sender`."""
