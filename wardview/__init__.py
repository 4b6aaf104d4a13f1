"""The ward view: a web page over the broker (``lungwatch dashboard``, ``docs/dashboard.md``).

- :mod:`wardview.config`: the ``dashboard`` block of a runtime config, password hashes
  (no paho, no web server: the runtime's config loader imports it);
- :mod:`wardview.ward`: the ward's state, built only from the published topics (each
  payload read by :mod:`lungwatch.intake` within limits, or refused with its reason);
- :mod:`wardview.feed`: the paho client that reads the site's topics and publishes
  acknowledge commands;
- :mod:`wardview.web`: the HTTP rules (allowed hosts, strict headers, security headers)
  and what the view adds to uvicorn's protocol (connection caps, request and write deadlines);
- :mod:`wardview.login`: logins in the same time for every name, failed ones bounded;
- :mod:`wardview.server`: the web server, a Starlette application on uvicorn (page,
  Server-Sent Events, acknowledge);
- :mod:`wardview.cli`: ``lungwatch dashboard``;
- ``static/``: the page (plain HTML, CSS and JavaScript; nothing fetched from elsewhere).
"""
