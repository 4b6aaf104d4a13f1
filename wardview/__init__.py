"""The ward view: a web page over the broker (``lungwatch dashboard``, ``docs/dashboard.md``).

:mod:`wardview.config` is the ``dashboard`` block (no paho, no web server: the runtime's
config loader imports it); :mod:`wardview.ward` the ward's state, built only from the
published topics; :mod:`wardview.feed` its paho client; :mod:`wardview.server` the Starlette
application, behind the HTTP rules of :mod:`wardview.web` and the logins of
:mod:`wardview.login`; ``static/`` the page (plain HTML, CSS and JavaScript).
"""
