"""A location's content made from files, beside :mod:`wsgate.proxy` (content made by an
upstream).

The data flow, as nginx's content phase has it: the phase handlers in
:mod:`wsgate.http.phases` (``try_files``, then the content handler) call
:mod:`wsgate.content.files`, which opens and stats files (system calls, no sockets) and
applies the pure rules of :mod:`wsgate.http.static` (paths, types, validators, the
not_modified and range filters), :mod:`wsgate.http.autoindex` and :mod:`wsgate.http.charset`;
what it decides is a :class:`~wsgate.http.static.FileResponse` (an open file and which of its
bytes to send), which :mod:`wsgate.content.sender` writes to the client through the event
loop.  A package of its own because neither half is proxying, and the sender is the only
asyncio code static files need.
"""
